//! A test cluster: one image, one controller, records applied at consecutive indices as
//! soon as the controller returns them (the working copy the driver keeps).

#![allow(dead_code)]

use holdfast_metadata::controller::{ControllerResponse, ElectionType, HeartbeatReply};
use holdfast_metadata::{
    Controller, ControllerConfig, ControllerError, ControllerRequest, Delta, Endpoint,
    MetadataImage, NewTopic, Record, TopicId,
};

pub struct Cluster {
    pub image: MetadataImage,
    pub controller: Controller,
    pub now_ms: i64,
    pub applied: Vec<(u64, Record)>,
}

impl Cluster {
    pub fn new(seed: u64) -> Cluster {
        Cluster::with_config(ControllerConfig::default(), seed)
    }

    pub fn with_config(config: ControllerConfig, seed: u64) -> Cluster {
        let mut c = Cluster {
            image: MetadataImage::new(),
            controller: Controller::new(config, seed),
            now_ms: 1_000_000,
            applied: Vec::new(),
        };
        c.apply(Controller::bootstrap_records("test-cluster-id"));
        c.controller.on_become_active(&c.image, c.now_ms, None);
        c
    }

    /// Applies records at the next indices; every record must apply.
    pub fn apply(&mut self, records: Vec<Record>) -> Vec<Delta> {
        let mut deltas = Vec::new();
        for r in records {
            let index = self.image.last_applied + 1;
            match self.image.apply(index, &r) {
                Ok(d) => deltas.push(d),
                Err(e) => panic!("record {r:?} rejected at {index}: {e}"),
            }
            self.applied.push((index, r));
        }
        deltas
    }

    pub fn request(
        &mut self,
        req: ControllerRequest,
    ) -> Result<ControllerResponse, ControllerError> {
        let (records, resp) = self.controller.handle(&self.image, req, self.now_ms)?;
        self.apply(records);
        Ok(resp)
    }

    pub fn tick(&mut self) -> Vec<Record> {
        let records = self.controller.tick(&self.image, self.now_ms);
        self.apply(records.clone());
        records
    }

    /// Registers after a clean shutdown (or for the first time).
    pub fn register(&mut self, id: i32, rack: Option<&str>) -> i64 {
        let previous = self.image.brokers.get(&id).map_or(-1, |b| b.epoch);
        self.register_full(id, rack, previous)
    }

    pub fn register_full(
        &mut self,
        id: i32,
        rack: Option<&str>,
        previous_broker_epoch: i64,
    ) -> i64 {
        let req = ControllerRequest::RegisterBroker {
            id,
            incarnation: 1000 + id as u128 + (self.image.last_applied as u128) * 7,
            listeners: vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092,
            }],
            rack: rack.map(String::from),
            previous_broker_epoch,
        };
        self.request(req).expect("registered");
        self.image.brokers[&id].epoch
    }

    pub fn heartbeat_full(
        &mut self,
        id: i32,
        want_fence: bool,
        want_shutdown: bool,
    ) -> HeartbeatReply {
        let epoch = self.image.brokers[&id].epoch;
        let req = ControllerRequest::Heartbeat {
            id,
            broker_epoch: epoch,
            metadata_offset: self.image.last_applied as i64,
            want_fence,
            want_shutdown,
        };
        match self.request(req) {
            Ok(ControllerResponse::Heartbeat(h)) => h,
            other => panic!("heartbeat: {other:?}"),
        }
    }

    pub fn heartbeat(&mut self, id: i32) -> HeartbeatReply {
        self.heartbeat_full(id, false, false)
    }

    /// Registers and unfences brokers `ids`.
    pub fn start_brokers(&mut self, ids: &[i32]) {
        for id in ids {
            self.register(*id, None);
        }
        for id in ids {
            let h = self.heartbeat(*id);
            assert!(!h.is_fenced, "broker {id} unfenced after catching up");
        }
    }

    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        rf: i16,
        configs: &[(&str, &str)],
    ) -> (i16, TopicId) {
        let req = ControllerRequest::CreateTopics {
            topics: vec![NewTopic {
                name: name.into(),
                partitions,
                replication_factor: rf,
                configs: configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                assignments: None,
            }],
            validate_only: false,
        };
        match self.request(req) {
            Ok(ControllerResponse::CreateTopics(r)) => (r[0].error, r[0].id),
            other => panic!("create: {other:?}"),
        }
    }

    pub fn elect(&mut self, election: ElectionType, topic: &str, partition: i32) -> i16 {
        let req = ControllerRequest::ElectLeaders {
            election,
            partitions: Some(vec![(topic.into(), partition)]),
        };
        match self.request(req) {
            Ok(ControllerResponse::ElectLeaders(r)) => r[0].error,
            other => panic!("elect: {other:?}"),
        }
    }

    pub fn leads(&self, id: i32) -> usize {
        self.image
            .partitions()
            .filter(|(_, _, p)| p.leader == id)
            .count()
    }

    pub fn in_isrs(&self, id: i32) -> usize {
        self.image
            .partitions()
            .filter(|(_, _, p)| p.isr.contains(&id))
            .count()
    }
}
