package dev.holdfast.compat;

import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.producer.Callback;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * The Java client (kafka-clients) as a producer of the chaos harness (crates/chaos/src/java.rs):
 * unique values {@code <prefix>-<n>} sent round-robin over the partitions, one JSON line per
 * event on stdout (flushed per line), the client's logs on stderr.
 *
 * <p>usage: ChaosProducer BOOTSTRAP TOPIC PARTITIONS RATE_PER_SECOND PREFIX [ACKS]
 *
 * <p>Protocol (stdin lines from the harness, stdout lines to it):
 * <ul>
 *   <li>{@code {"e":"ready"}} once the producer is created and knows the topic's partitions;
 *   <li>stdin {@code sync}: {@code {"e":"sync","t":NANOS}} with {@link System#nanoTime()} (the
 *       harness maps this process's clock onto its own);
 *   <li>stdin {@code go}: sending starts;
 *   <li>{@code {"e":"invoke","n":N,"t":NANOS,"value":V,"partition":P}} before each send, then
 *       from its callback {@code {"e":"ok","n":N,"partition":P,"offset":O}} (offset -1 when the
 *       client got none) or {@code {"e":"error","n":N,"class":C,"message":M,"presend":B}}, where
 *       presend says the send failed inside {@code send()}, before the record was appended to the
 *       client's buffer (so it was never sent);
 *   <li>stdin {@code stop} or end of stdin: sending stops, {@code close} waits at most 20 s for
 *       the sends in flight (the rest fail with an exception), then
 *       {@code {"e":"done","sent":S,"acked":A,"errors":E}} and exit 0.
 * </ul>
 */
public final class ChaosProducer {
    /** Bound of the final flush (close), as the rdkafka producers' flush. */
    static final Duration CLOSE_BOUND = Duration.ofSeconds(20);

    static final PrintStream OUT = new PrintStream(
            new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16), false,
            StandardCharsets.UTF_8);

    static final CountDownLatch GO = new CountDownLatch(1);
    static final CountDownLatch STOP = new CountDownLatch(1);
    static final AtomicLong ACKED = new AtomicLong();
    static final AtomicLong ERRORS = new AtomicLong();

    /** The send in progress on the sending thread (-1: none), to recognise a failure inside send(). */
    static volatile long sendingN = -1;
    static volatile Thread sendingThread;

    public static void main(String[] args) throws Exception {
        if (args.length < 5 || args.length > 6) {
            System.err.println("usage: ChaosProducer BOOTSTRAP TOPIC PARTITIONS RATE_PER_SECOND PREFIX [all|1]");
            System.exit(2);
        }
        String bootstrap = args[0];
        String topic = args[1];
        int partitions = Integer.parseInt(args[2]);
        int rate = Math.max(1, Integer.parseInt(args[3]));
        String prefix = args[4];
        String acks = args.length == 6 ? args[5] : "all";
        if (!acks.equals("all") && !acks.equals("1")) {
            System.err.println("ACKS must be all or 1");
            System.exit(2);
        }

        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.CLIENT_ID_CONFIG, prefix);
        // As the rdkafka workload (crates/chaos/src/workload.rs): acks=all and idempotent (or the
        // --acks 1 control: leader-only acknowledgement, idempotence off), 5 in flight, linger
        // 2 ms, request timeout 5 s, a send given up after 15 s (message.timeout.ms there).
        p.put(ProducerConfig.ACKS_CONFIG, acks);
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, acks.equals("all") ? "true" : "false");
        p.put(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, "5");
        p.put(ProducerConfig.LINGER_MS_CONFIG, "2");
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "15000");
        p.put(ProducerConfig.RECONNECT_BACKOFF_MS_CONFIG, "50");
        p.put(ProducerConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        // send() blocks (metadata, buffer) at most this long, so a stop is never held up longer.
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "5000");
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());

        Thread control = new Thread(ChaosProducer::readControl, "chaos-control");
        control.setDaemon(true);
        long sent = 0;
        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p);
        try {
            awaitMetadata(producer, topic, partitions);
            emit("{\"e\":\"ready\"}");
            control.start();
            GO.await();
            sendingThread = Thread.currentThread();
            long pace = 1_000_000_000L / rate;
            long next = System.nanoTime();
            // Bounded by the stop: the harness always ends with "stop" or closes stdin.
            while (STOP.getCount() > 0) {
                int partition = (int) (sent % partitions);
                long n = sent++;
                String value = prefix + "-" + n;
                emit("{\"e\":\"invoke\",\"n\":" + n + ",\"t\":" + System.nanoTime() + ",\"value\":"
                        + json(value) + ",\"partition\":" + partition + "}");
                sendingN = n;
                try {
                    producer.send(new ProducerRecord<>(topic, partition, null,
                            value.getBytes(StandardCharsets.UTF_8)), new Outcome(n, partition));
                } catch (RuntimeException e) {
                    // Thrown by send() itself (not an ApiException): never appended.
                    error(n, partition, e, true);
                } finally {
                    sendingN = -1;
                }
                next += pace;
                long now = System.nanoTime();
                if (now - next > 1_000_000_000L) {
                    next = now; // more than 1 s behind (send blocked): do not burst to catch up
                } else if (next > now) {
                    // Pacing, and the stop is awaited at the same time.
                    STOP.await(next - now, TimeUnit.NANOSECONDS);
                }
            }
        } finally {
            System.err.println("chaos-producer: stopping after " + sent + " sends; close (at most "
                    + CLOSE_BOUND.toSeconds() + " s)");
            producer.close(CLOSE_BOUND);
        }
        emit("{\"e\":\"done\",\"sent\":" + sent + ",\"acked\":" + ACKED.get() + ",\"errors\":"
                + ERRORS.get() + "}");
        OUT.flush();
        System.exit(OUT.checkError() ? 1 : 0);
    }

    /**
     * Ready means connected: the topic's partitions known to the client (each attempt blocks at
     * most max.block.ms), so a slow start (a JVM on a loaded machine) is not taken for a fault.
     */
    static void awaitMetadata(KafkaProducer<byte[], byte[]> producer, String topic, int partitions) {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
        while (true) {
            try {
                int n = producer.partitionsFor(topic).size();
                if (n >= partitions) {
                    return;
                }
                System.err.println("chaos-producer: " + topic + " has " + n + " partitions, want " + partitions);
            } catch (RuntimeException e) {
                System.err.println("chaos-producer: no metadata for " + topic + " yet: " + e);
            }
            if (System.nanoTime() > deadline) {
                throw new IllegalStateException("no metadata for " + topic + " within 60 s");
            }
            try {
                Thread.sleep(200); // after a failed attempt (partitionsFor itself waits)
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        }
    }

    /** stdin: "sync" answers with this process's clock, "go" starts, "stop" or EOF stops. */
    static void readControl() {
        try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            String line;
            while ((line = in.readLine()) != null) {
                switch (line.trim()) {
                    case "sync" -> emit("{\"e\":\"sync\",\"t\":" + System.nanoTime() + "}");
                    case "go" -> GO.countDown();
                    case "stop" -> {
                        STOP.countDown();
                        GO.countDown();
                    }
                    default -> System.err.println("chaos-producer: unknown control line " + line);
                }
            }
        } catch (Exception e) {
            System.err.println("chaos-producer: reading stdin: " + e);
        }
        STOP.countDown();
        GO.countDown();
    }

    static final class Outcome implements Callback {
        final long n;
        final int partition;

        Outcome(long n, int partition) {
            this.n = n;
            this.partition = partition;
        }

        @Override
        public void onCompletion(RecordMetadata md, Exception e) {
            if (e == null) {
                ACKED.incrementAndGet();
                long offset = md.hasOffset() ? md.offset() : -1;
                emit("{\"e\":\"ok\",\"n\":" + n + ",\"partition\":" + md.partition() + ",\"offset\":" + offset + "}");
            } else {
                // KafkaProducer.doSend hands an ApiException raised before the append to the
                // callback on the calling thread, inside send().
                boolean presend = sendingN == n && Thread.currentThread() == sendingThread;
                error(n, partition, e, presend);
            }
        }
    }

    static void error(long n, int partition, Exception e, boolean presend) {
        ERRORS.incrementAndGet();
        emit("{\"e\":\"error\",\"n\":" + n + ",\"partition\":" + partition + ",\"class\":"
                + json(e.getClass().getName()) + ",\"message\":" + json(String.valueOf(e.getMessage()))
                + ",\"presend\":" + presend + "}");
    }

    /** One line, flushed at once (the callbacks run on the client's I/O thread). */
    static void emit(String line) {
        synchronized (OUT) {
            OUT.print(line);
            OUT.print('\n');
            OUT.flush();
        }
    }

    static String json(String s) {
        StringBuilder b = new StringBuilder(s.length() + 2).append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        return b.append('"').toString();
    }
}
