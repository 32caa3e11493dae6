package dev.holdfast.compat;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutionException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TransactionDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Transactions through the Java client (kafka-clients 4.x): commit/abort visibility, fencing,
 * transactional offsets, and a helper mode for the delayed-EndTxn test.
 *
 * usage: TxnCheck BOOTSTRAP CHECK...            (prints PASS/FAIL per check)
 *        TxnCheck BOOTSTRAP hold TOPIC TXN_ID   (see holdForReplay)
 */
public final class TxnCheck {
    static final Duration TIMEOUT = Duration.ofSeconds(30);
    static String bootstrap;

    public static void main(String[] args) throws Exception {
        bootstrap = args[0];
        if (args.length == 4 && args[1].equals("hold")) {
            holdForReplay(args[2], args[3]);
            System.exit(0);
        }
        int failed = 0;
        for (int i = 1; i < args.length; i++) {
            String check = args[i];
            try {
                switch (check) {
                    case "txn-commit-abort" -> commitAbort();
                    case "txn-fencing" -> fencing();
                    case "txn-offsets" -> offsets();
                    default -> throw new IllegalArgumentException("unknown check " + check);
                }
                System.out.println("PASS " + check);
            } catch (Throwable t) {
                failed++;
                Throwable root = t instanceof ExecutionException && t.getCause() != null ? t.getCause() : t;
                System.out.println("FAIL " + check + ": " + root);
                root.printStackTrace(System.out);
            }
            System.out.flush();
        }
        System.exit(failed == 0 ? 0 : 1);
    }

    static void check(boolean cond, String what) {
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String topicName(String prefix) {
        return "java-" + prefix + "-" + UUID.randomUUID().toString().substring(0, 8);
    }

    static Admin admin() {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        return Admin.create(p);
    }

    static void createTopic(String topic) throws Exception {
        try (Admin a = admin()) {
            a.createTopics(List.of(new NewTopic(topic, 1, (short) 1))).all().get();
        }
    }

    static KafkaProducer<byte[], byte[]> txnProducer(String txnId) {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p);
        producer.initTransactions();
        return producer;
    }

    static KafkaConsumer<byte[], byte[]> consumer(String isolation, String group) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, isolation);
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        if (group != null) {
            p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        }
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        return new KafkaConsumer<>(p);
    }

    /** Every record of partition 0 visible under `isolation`, up to the end offset. */
    static List<String> readAll(String topic, String isolation) {
        List<String> out = new ArrayList<>();
        TopicPartition tp = new TopicPartition(topic, 0);
        try (KafkaConsumer<byte[], byte[]> c = consumer(isolation, null)) {
            c.assign(List.of(tp));
            c.seekToBeginning(List.of(tp));
            long end = c.endOffsets(List.of(tp)).get(tp);
            long deadline = System.nanoTime() + TIMEOUT.toNanos();
            while (c.position(tp) < end) {
                check(System.nanoTime() < deadline, "reading " + topic + " timed out at " + c.position(tp) + " of " + end);
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(200))) {
                    out.add(new String(r.value(), StandardCharsets.UTF_8));
                }
            }
        }
        return out;
    }

    static void commitAbort() throws Exception {
        String topic = topicName("txn");
        createTopic(topic);
        try (KafkaProducer<byte[], byte[]> p = txnProducer("tx-" + topic)) {
            p.beginTransaction();
            p.send(new ProducerRecord<>(topic, 0, null, bytes("c1")));
            p.send(new ProducerRecord<>(topic, 0, null, bytes("c2")));
            p.commitTransaction();
            p.beginTransaction();
            p.send(new ProducerRecord<>(topic, 0, null, bytes("a1")));
            p.flush();
            p.abortTransaction();
            p.beginTransaction();
            p.send(new ProducerRecord<>(topic, 0, null, bytes("c3")));
            p.commitTransaction();
        }
        List<String> committed = readAll(topic, "read_committed");
        check(committed.equals(List.of("c1", "c2", "c3")), "read_committed saw " + committed);
        List<String> all = readAll(topic, "read_uncommitted");
        check(all.equals(List.of("c1", "c2", "a1", "c3")), "read_uncommitted saw " + all);
        try (KafkaConsumer<byte[], byte[]> c = consumer("read_committed", null)) {
            TopicPartition tp = new TopicPartition(topic, 0);
            long lso = c.endOffsets(List.of(tp)).get(tp);
            // c1 c2 COMMIT a1 ABORT c3 COMMIT
            check(lso == 7, "read_committed end offset " + lso);
        }
    }

    static void fencing() throws Exception {
        String topic = topicName("fence");
        createTopic(topic);
        String txnId = "tx-" + topic;
        KafkaProducer<byte[], byte[]> first = txnProducer(txnId);
        first.beginTransaction();
        first.send(new ProducerRecord<>(topic, 0, null, bytes("zombie")));
        first.flush();
        try (KafkaProducer<byte[], byte[]> second = txnProducer(txnId)) {
            second.beginTransaction();
            second.send(new ProducerRecord<>(topic, 0, null, bytes("live")));
            second.commitTransaction();
        }
        boolean fenced = false;
        try {
            first.send(new ProducerRecord<>(topic, 0, null, bytes("zombie-2"))).get();
            first.commitTransaction();
        } catch (ProducerFencedException e) {
            fenced = true;
        } catch (ExecutionException e) {
            fenced = e.getCause() instanceof ProducerFencedException
                || e.getCause() instanceof org.apache.kafka.common.errors.InvalidProducerEpochException;
        } catch (KafkaException e) {
            fenced = true;
        }
        first.close(Duration.ZERO);
        check(fenced, "the first producer was not fenced");
        List<String> committed = readAll(topic, "read_committed");
        check(committed.equals(List.of("live")), "read_committed saw " + committed);
    }

    static void offsets() throws Exception {
        String src = topicName("src");
        String dst = topicName("dst");
        createTopic(src);
        createTopic(dst);
        String group = "g-" + src;
        TopicPartition tp = new TopicPartition(src, 0);
        try (KafkaProducer<byte[], byte[]> p = txnProducer("tx-" + src);
             KafkaConsumer<byte[], byte[]> c = consumer("read_committed", group)) {
            c.subscribe(List.of(src));
            c.poll(Duration.ofMillis(500)); // joins the group
            p.beginTransaction();
            p.send(new ProducerRecord<>(dst, 0, null, bytes("x")));
            p.sendOffsetsToTransaction(Map.of(tp, new OffsetAndMetadata(5)), c.groupMetadata());
            p.abortTransaction();
            check(c.committed(java.util.Set.of(tp)).get(tp) == null, "aborted offsets visible");
            p.beginTransaction();
            p.send(new ProducerRecord<>(dst, 0, null, bytes("y")));
            p.sendOffsetsToTransaction(Map.of(tp, new OffsetAndMetadata(9, "meta")), c.groupMetadata());
            p.commitTransaction();
            OffsetAndMetadata om = c.committed(java.util.Set.of(tp)).get(tp);
            check(om != null && om.offset() == 9 && "meta".equals(om.metadata()), "committed " + om);
        }
        List<String> out = readAll(dst, "read_committed");
        check(out.equals(List.of("y")), "read_committed saw " + out);
    }

    /**
     * Commits transaction 1 ("t1"), leaves transaction 2 ("t2") open and prints
     * "TXN1 pid epoch" (what transaction 1's EndTxn carried) and "READY"; waits for a line
     * on stdin (the test replays transaction 1's EndTxn meanwhile), aborts transaction 2,
     * commits transaction 3 ("t3") and prints "DONE".
     */
    static void holdForReplay(String topic, String txnId) throws Exception {
        try (KafkaProducer<byte[], byte[]> p = txnProducer(txnId); Admin a = admin()) {
            p.beginTransaction();
            p.send(new ProducerRecord<>(topic, 0, null, bytes("t1")));
            p.flush();
            TransactionDescription d = a.describeTransactions(List.of(txnId)).description(txnId).get();
            System.out.println("TXN1 " + d.producerId() + " " + d.producerEpoch());
            p.commitTransaction();
            p.beginTransaction();
            p.send(new ProducerRecord<>(topic, 0, null, bytes("t2")));
            p.flush();
            System.out.println("READY");
            System.out.flush();
            new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8)).readLine();
            try {
                p.abortTransaction();
                System.out.println("ABORTED");
            } catch (KafkaException e) {
                System.out.println("ABORT-FAILED " + e);
            }
            System.out.flush();
        }
        try (KafkaProducer<byte[], byte[]> p = txnProducer(txnId)) {
            p.beginTransaction();
            p.send(new ProducerRecord<>(topic, 0, null, bytes("t3")));
            p.commitTransaction();
        }
        System.out.println("DONE");
    }
}
