//! Holdfast's transaction coordinator, sans-IO: the state of every `transactional.id`, the
//! transitions of Kafka's transaction protocol (InitProducerId, AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn, timeouts) and the `__transaction_state` record layout.
//!
//! A transition is two-phase, as in Kafka: [`Coordinator`] checks a request and returns a
//! [`Transition`] (the new state, marked pending); the broker writes its record to
//! `__transaction_state`, waits until it is durable, and only then calls
//! [`Coordinator::complete`], which makes it the current state. While a transition is
//! pending, other requests for that transactional id get CONCURRENT_TRANSACTIONS.
//!
//! Architecture invariant: this crate does no I/O and reads no clock: time is passed in.

pub mod records;

use std::collections::{BTreeSet, HashMap};

/// Kafka error codes used here.
pub mod codes {
    pub const NONE: i16 = 0;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    pub const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
    pub const CONCURRENT_TRANSACTIONS: i16 = 51;
    pub const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
    pub const PRODUCER_FENCED: i16 = 90;
}

#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("__transaction_state record: {0}")]
    Record(String),
}

/// Kafka's TransactionState, with its on-disk codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    pub fn code(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }
    pub fn from_code(c: i8) -> Option<TxnState> {
        Some(match c {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }
    /// The names DescribeTransactions / ListTransactions use.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }
}

/// The state of one transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump (-1 if none); memory only.
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Partitions in the current transaction, (topic, partition).
    pub partitions: BTreeSet<(String, i32)>,
    pub last_update_ms: i64,
    /// When the current transaction started (-1 when none is open).
    pub start_ms: i64,
    /// The state of a transition being written, if any.
    pub pending: Option<TxnState>,
    /// The producer id the client continues with after this transaction completes, when
    /// its epochs ran out under transactions version 2 (-1 otherwise); memory only.
    pub next_producer_id: i64,
}

/// A state change to persist before it takes effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub target: TxnMeta,
}

impl Transition {
    pub fn transactional_id(&self) -> &str {
        &self.target.transactional_id
    }
}

/// What InitProducerId leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// Persist this, then answer with its producer id and epoch.
    Write(Transition),
    /// An open transaction must be aborted first: persist this (PrepareAbort, epoch bumped),
    /// write the markers, and answer CONCURRENT_TRANSACTIONS (the client retries).
    AbortFirst(Transition),
}

/// An EndTxn request.
#[derive(Debug, Clone, Copy)]
pub struct EndTxn<'a> {
    pub transactional_id: &'a str,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    /// Transactions version 2 (EndTxn v5+): end with the producer epoch bumped.
    pub bump: bool,
}

/// What EndTxn leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOutcome {
    /// A retry of an EndTxn that already completed: answer success.
    AlreadyDone,
    /// Persist this (PrepareCommit / PrepareAbort), answer, then write the markers.
    Prepare(Transition),
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `transaction.max.timeout.ms` (Kafka: 900000).
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms` (Kafka: 7 days): an id with no transaction open
    /// and no activity for this long is forgotten (its state is tombstoned).
    pub id_expiration_ms: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_timeout_ms: 900_000,
            id_expiration_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// Epochs stop before i16::MAX: at the end, a new producer id is allocated.
const EPOCH_EXHAUSTED: i16 = i16::MAX - 1;

#[derive(Debug, Default)]
pub struct Coordinator {
    cfg: Config,
    txns: HashMap<String, TxnMeta>,
    by_producer: HashMap<i64, String>,
}

impl Coordinator {
    pub fn new(cfg: Config) -> Coordinator {
        Coordinator {
            cfg,
            txns: HashMap::new(),
            by_producer: HashMap::new(),
        }
    }

    pub fn get(&self, transactional_id: &str) -> Option<&TxnMeta> {
        self.txns.get(transactional_id)
    }

    pub fn all(&self) -> impl Iterator<Item = &TxnMeta> {
        self.txns.values()
    }

    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// The transactional id a producer id belongs to.
    pub fn transactional_id_of(&self, producer_id: i64) -> Option<&str> {
        self.by_producer.get(&producer_id).map(String::as_str)
    }

    fn begin(&mut self, target: TxnMeta) -> Transition {
        if let Some(m) = self.txns.get_mut(&target.transactional_id) {
            m.pending = Some(target.state);
        }
        Transition { target }
    }

    /// InitProducerId with a transactional id. `expected` is the (producer id, epoch) the
    /// client already holds (v3+, KIP-360), `allocate` a fresh producer id.
    pub fn init_producer_id<E>(
        &mut self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        now_ms: i64,
        allocate: impl FnOnce() -> Result<i64, E>,
    ) -> Result<Result<InitOutcome, i16>, E> {
        if timeout_ms <= 0 || timeout_ms > self.cfg.max_timeout_ms {
            return Ok(Err(codes::INVALID_TRANSACTION_TIMEOUT));
        }
        let Some(m) = self.txns.get(transactional_id) else {
            if expected.is_some_and(|(pid, _)| pid >= 0) {
                // The client believes in a producer id this coordinator never gave out.
                return Ok(Err(codes::INVALID_PRODUCER_ID_MAPPING));
            }
            let pid = allocate()?;
            let target = TxnMeta {
                transactional_id: transactional_id.to_string(),
                producer_id: pid,
                producer_epoch: 0,
                last_producer_epoch: -1,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                last_update_ms: now_ms,
                start_ms: -1,
                pending: None,
                next_producer_id: -1,
            };
            // Placeholder so that concurrent requests see the pending transition.
            let mut placeholder = target.clone();
            placeholder.producer_id = -1;
            placeholder.producer_epoch = -1;
            placeholder.pending = Some(TxnState::Empty);
            self.txns.insert(transactional_id.to_string(), placeholder);
            return Ok(Ok(InitOutcome::Write(Transition { target })));
        };
        if m.pending.is_some() {
            return Ok(Err(codes::CONCURRENT_TRANSACTIONS));
        }
        if let Some((pid, epoch)) = expected.filter(|(pid, _)| *pid >= 0) {
            let valid = pid == m.producer_id
                && (epoch == m.producer_epoch || epoch == m.last_producer_epoch);
            if !valid {
                return Ok(Err(codes::PRODUCER_FENCED));
            }
        }
        match m.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence => {
                Ok(Err(codes::CONCURRENT_TRANSACTIONS))
            }
            TxnState::Ongoing => {
                // Fence the current producer and abort what it left open.
                let target = self.abort_target(m, now_ms);
                Ok(Ok(InitOutcome::AbortFirst(self.begin(target))))
            }
            TxnState::Empty
            | TxnState::CompleteCommit
            | TxnState::CompleteAbort
            | TxnState::Dead => {
                let mut target = m.clone();
                target.pending = None;
                if m.producer_epoch >= EPOCH_EXHAUSTED {
                    target.producer_id = allocate()?;
                    target.producer_epoch = 0;
                    target.last_producer_epoch = -1;
                } else {
                    target.last_producer_epoch = m.producer_epoch;
                    target.producer_epoch = m.producer_epoch + 1;
                }
                target.timeout_ms = timeout_ms;
                target.state = TxnState::Empty;
                target.partitions.clear();
                target.start_ms = -1;
                target.last_update_ms = now_ms;
                Ok(Ok(InitOutcome::Write(self.begin(target))))
            }
        }
    }

    /// PrepareAbort with the epoch bumped: the producer that left it open is fenced.
    fn abort_target(&self, m: &TxnMeta, now_ms: i64) -> TxnMeta {
        let mut target = m.clone();
        target.pending = None;
        if m.producer_epoch < EPOCH_EXHAUSTED {
            target.last_producer_epoch = m.producer_epoch;
            target.producer_epoch = m.producer_epoch + 1;
        }
        target.state = TxnState::PrepareAbort;
        target.last_update_ms = now_ms;
        target
    }

    fn check_producer(
        &self,
        transactional_id: &str,
        pid: i64,
        epoch: i16,
    ) -> Result<&TxnMeta, i16> {
        let m = self
            .txns
            .get(transactional_id)
            .ok_or(codes::INVALID_PRODUCER_ID_MAPPING)?;
        if m.producer_id != pid {
            return Err(codes::INVALID_PRODUCER_ID_MAPPING);
        }
        if epoch != m.producer_epoch {
            return Err(codes::PRODUCER_FENCED);
        }
        if m.pending.is_some() {
            return Err(codes::CONCURRENT_TRANSACTIONS);
        }
        Ok(m)
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn, with the group's `__consumer_offsets`
    /// partition). `Ok(None)`: every partition is already in the transaction.
    pub fn add_partitions(
        &mut self,
        transactional_id: &str,
        pid: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        now_ms: i64,
    ) -> Result<Option<Transition>, i16> {
        let m = self.check_producer(transactional_id, pid, epoch)?;
        match m.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence => {
                return Err(codes::CONCURRENT_TRANSACTIONS)
            }
            TxnState::Dead => return Err(codes::INVALID_TXN_STATE),
            _ => {}
        }
        if m.state == TxnState::Ongoing && partitions.iter().all(|p| m.partitions.contains(p)) {
            return Ok(None);
        }
        let mut target = m.clone();
        if m.state != TxnState::Ongoing {
            target.partitions.clear();
            target.start_ms = now_ms;
        }
        target.partitions.extend(partitions.iter().cloned());
        target.state = TxnState::Ongoing;
        target.last_update_ms = now_ms;
        target.pending = None;
        Ok(Some(self.begin(target)))
    }

    /// EndTxn. `bump` (transactions version 2, EndTxn v5+): the transaction ends with the
    /// producer epoch bumped, so nothing sent with the old epoch can touch the next
    /// transaction; `allocate` gives a new producer id when the epochs are exhausted.
    pub fn end_txn<E>(
        &mut self,
        req: EndTxn<'_>,
        now_ms: i64,
        allocate: impl FnOnce() -> Result<i64, E>,
    ) -> Result<Result<EndOutcome, i16>, E> {
        let EndTxn {
            transactional_id,
            producer_id: pid,
            producer_epoch: epoch,
            commit,
            bump,
        } = req;
        if bump {
            // A retry of an EndTxn v5 that already bumped the epoch.
            if let Some(m) = self.txns.get(transactional_id) {
                if m.producer_id == pid
                    && epoch == m.last_producer_epoch
                    && epoch != m.producer_epoch
                    && m.pending.is_none()
                {
                    return Ok(match (m.state, commit) {
                        (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
                            Ok(EndOutcome::AlreadyDone)
                        }
                        (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                            Err(codes::CONCURRENT_TRANSACTIONS)
                        }
                        (TxnState::CompleteCommit, false)
                        | (TxnState::CompleteAbort, true)
                        | (TxnState::PrepareCommit, false)
                        | (TxnState::PrepareAbort, true) => Err(codes::INVALID_TXN_STATE),
                        _ => Err(codes::PRODUCER_FENCED),
                    });
                }
            }
        }
        let m = match self.check_producer(transactional_id, pid, epoch) {
            Ok(m) => m,
            Err(code) => return Ok(Err(code)),
        };
        Ok(match (m.state, commit) {
            (TxnState::Ongoing, _) => {
                let mut target = m.clone();
                target.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                target.last_update_ms = now_ms;
                target.pending = None;
                if bump {
                    if m.producer_epoch >= EPOCH_EXHAUSTED {
                        // Markers go out with the last epoch; the client continues with a
                        // new producer id.
                        target.next_producer_id = allocate()?;
                    }
                    target.last_producer_epoch = m.producer_epoch;
                    target.producer_epoch = m.producer_epoch.saturating_add(1);
                }
                Ok(EndOutcome::Prepare(self.begin(target)))
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
                Ok(EndOutcome::AlreadyDone)
            }
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(codes::CONCURRENT_TRANSACTIONS)
            }
            // Ending with nothing open, or the other outcome than the one recorded.
            _ => Err(codes::INVALID_TXN_STATE),
        })
    }

    /// The producer id and epoch a client continues with after `transactional_id`'s
    /// current transaction (EndTxn v5 response).
    pub fn continuing_producer(&self, transactional_id: &str) -> Option<(i64, i16)> {
        let m = self.txns.get(transactional_id)?;
        Some(if m.next_producer_id >= 0 {
            (m.next_producer_id, 0)
        } else {
            (m.producer_id, m.producer_epoch)
        })
    }

    /// Makes a persisted transition current (`persisted`), or drops it (the write failed).
    pub fn complete(&mut self, t: &Transition, persisted: bool) {
        let id = t.transactional_id().to_string();
        if !persisted {
            match self.txns.get_mut(&id) {
                Some(m) if m.producer_id < 0 => {
                    self.txns.remove(&id);
                }
                Some(m) => m.pending = None,
                None => {}
            }
            return;
        }
        if let Some(old) = self.txns.get(&id) {
            if old.producer_id != t.target.producer_id {
                self.by_producer.remove(&old.producer_id);
            }
        }
        let mut m = t.target.clone();
        m.pending = None;
        self.by_producer.insert(m.producer_id, id.clone());
        self.txns.insert(id, m);
    }

    /// After every marker of a PrepareCommit/PrepareAbort is durable: the completion.
    pub fn markers_written(&mut self, transactional_id: &str, now_ms: i64) -> Option<Transition> {
        let m = self.txns.get(transactional_id)?;
        if m.pending.is_some() {
            return None;
        }
        let state = match m.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            _ => return None,
        };
        let mut target = m.clone();
        target.state = state;
        target.partitions.clear();
        target.start_ms = -1;
        target.last_update_ms = now_ms;
        if m.next_producer_id >= 0 {
            target.producer_id = m.next_producer_id;
            target.producer_epoch = 0;
            target.last_producer_epoch = -1;
            target.next_producer_id = -1;
        }
        Some(self.begin(target))
    }

    /// Transactions open past their timeout at `now_ms`: aborts to persist (the producer
    /// is fenced by the epoch bump, as Kafka does).
    pub fn expired(&mut self, now_ms: i64) -> Vec<Transition> {
        let ids: Vec<String> = self
            .txns
            .values()
            .filter(|m| {
                m.pending.is_none()
                    && m.state == TxnState::Ongoing
                    && now_ms.saturating_sub(m.start_ms) > i64::from(m.timeout_ms)
            })
            .map(|m| m.transactional_id.clone())
            .collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(m) = self.txns.get(&id) {
                let target = self.abort_target(m, now_ms);
                out.push(self.begin(target));
            }
        }
        out
    }

    /// Transactional ids idle past `transactional.id.expiration.ms` with nothing open: the
    /// caller persists a tombstone for each and then calls [`Coordinator::forget`]. They are
    /// marked pending meanwhile, so no request can revive them half-way.
    pub fn expired_ids(&mut self, now_ms: i64) -> Vec<String> {
        let limit = self.cfg.id_expiration_ms;
        let ids: Vec<String> = self
            .txns
            .values()
            .filter(|m| {
                m.pending.is_none()
                    && matches!(
                        m.state,
                        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                    )
                    && now_ms.saturating_sub(m.last_update_ms) > limit
            })
            .map(|m| m.transactional_id.clone())
            .collect();
        for id in &ids {
            if let Some(m) = self.txns.get_mut(id) {
                m.pending = Some(TxnState::Dead);
            }
        }
        ids
    }

    /// Forgets an expired transactional id once its tombstone is durable (`persisted`), or
    /// keeps it (the write failed).
    pub fn forget(&mut self, transactional_id: &str, persisted: bool) {
        if !persisted {
            if let Some(m) = self.txns.get_mut(transactional_id) {
                m.pending = None;
            }
            return;
        }
        if let Some(m) = self.txns.remove(transactional_id) {
            self.by_producer.remove(&m.producer_id);
        }
    }

    /// Cluster mode: drops every transactional id for which `unload` is true (its
    /// `__transaction_state` partition is led elsewhere now). Returns how many were dropped.
    /// Pending transitions of those ids complete as no-ops ([`Coordinator::complete`] of an
    /// unknown id with `persisted == false`), so callers report their writes failed.
    pub fn unload(&mut self, unload: impl Fn(&str) -> bool) -> usize {
        let before = self.txns.len();
        self.txns.retain(|id, _| !unload(id));
        let txns = &self.txns;
        self.by_producer.retain(|_, id| txns.contains_key(id));
        before - self.txns.len()
    }

    /// The earliest moment a transaction can time out, for the timer.
    pub fn next_deadline(&self) -> Option<i64> {
        self.txns
            .values()
            .filter(|m| m.state == TxnState::Ongoing)
            .map(|m| m.start_ms.saturating_add(i64::from(m.timeout_ms)) + 1)
            .min()
    }

    /// Transactions whose markers still have to be written (after a restart, or after a
    /// marker write failed).
    pub fn prepared(&self) -> Vec<TxnMeta> {
        self.txns
            .values()
            .filter(|m| {
                m.pending.is_none()
                    && matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort)
            })
            .cloned()
            .collect()
    }

    /// KIP-890 part 1: may this producer write transactional data to this partition? Only
    /// while its transaction is open with that partition added and the same epoch.
    pub fn verify_partition(
        &self,
        pid: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), i16> {
        let Some(id) = self.by_producer.get(&pid) else {
            return Err(codes::INVALID_TXN_STATE);
        };
        let Some(m) = self.txns.get(id) else {
            return Err(codes::INVALID_TXN_STATE);
        };
        if epoch < m.producer_epoch {
            return Err(codes::INVALID_PRODUCER_EPOCH);
        }
        if epoch != m.producer_epoch
            || m.state != TxnState::Ongoing
            || !m.partitions.contains(&(topic.to_string(), partition))
        {
            return Err(codes::INVALID_TXN_STATE);
        }
        Ok(())
    }

    /// Applies a `__transaction_state` record while loading (`None` value: tombstone).
    pub fn load_record(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), TxnError> {
        let id = records::decode_key(key)?;
        match value {
            None => {
                if let Some(old) = self.txns.remove(&id) {
                    self.by_producer.remove(&old.producer_id);
                }
            }
            Some(v) => {
                let mut m = records::decode_value(&id, v)?;
                if let Some(old) = self.txns.get(&id) {
                    if old.producer_id == m.producer_id && old.producer_epoch < m.producer_epoch {
                        m.last_producer_epoch = old.producer_epoch;
                    } else if old.producer_id == m.producer_id {
                        m.last_producer_epoch = old.last_producer_epoch;
                    }
                    self.by_producer.remove(&old.producer_id);
                }
                self.by_producer.insert(m.producer_id, id.clone());
                self.txns.insert(id, m);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
