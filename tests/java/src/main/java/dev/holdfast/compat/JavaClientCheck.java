package dev.holdfast.compat;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.NewPartitions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.RecordsToDelete;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndTimestamp;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Drives Holdfast with the Java client (kafka-clients) directly.
 *
 * Usage: JavaClientCheck BOOTSTRAP CHECK...   where CHECK is one of
 *   produce-consume-{none,gzip,snappy,lz4,zstd}, bulk-multipartition, admin, offsets-for-times,
 *   delete-records.
 * Prints "PASS <check>" or "FAIL <check>: <exception>" per check; exit 1 if any failed.
 * Every wait is a blocking client call with a deadline (Future.get, poll with timeout).
 *
 * JavaClientCheck BOOTSTRAP acked-log TOPIC N: sends values 0..N-1 (idempotent, acks=all) and
 * prints "ACK value partition offset" / "ERR value exception" per record as
 * the callbacks complete, then "DONE acked=A failed=F". The test kills and restarts the broker
 * meanwhile and checks that every ACKed value is stored exactly once.
 */
public final class JavaClientCheck {
    static final Duration TIMEOUT = Duration.ofSeconds(30);
    static String bootstrap;

    public static void main(String[] args) throws Exception {
        if (args.length == 4 && args[1].equals("acked-log")) {
            bootstrap = args[0];
            System.exit(ackedLog(args[2], Integer.parseInt(args[3])));
        }
        if (args.length < 2) {
            System.err.println("usage: JavaClientCheck BOOTSTRAP CHECK...");
            System.exit(2);
        }
        bootstrap = args[0];
        int failed = 0;
        for (int i = 1; i < args.length; i++) {
            String check = args[i];
            try {
                run(check);
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

    static void run(String check) throws Exception {
        if (check.startsWith("produce-consume-")) {
            produceConsume(check.substring("produce-consume-".length()));
        } else if (check.equals("bulk-multipartition")) {
            bulkMultiPartition();
        } else if (check.equals("admin")) {
            adminCheck();
        } else if (check.equals("offsets-for-times")) {
            offsetsForTimes();
        } else if (check.equals("delete-records")) {
            deleteRecords();
        } else {
            throw new IllegalArgumentException("unknown check " + check);
        }
    }

    // ---------------------------------------------------------------- helpers

    static void check(boolean cond, String what) {
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    static String topicName(String prefix) {
        return "java-" + prefix + "-" + UUID.randomUUID().toString().substring(0, 8);
    }

    static Admin admin() {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, (int) TIMEOUT.toMillis());
        return Admin.create(p);
    }

    static void createTopic(String topic, int partitions) throws Exception {
        try (Admin a = admin()) {
            a.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get();
        }
    }

    static KafkaProducer<byte[], byte[]> producer(String compression, Map<String, Object> extra) {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        // acks=all and enable.idempotence=true are the Java defaults; set them anyway so the test
        // keeps meaning the same thing if a default changes.
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, 2 * (int) TIMEOUT.toMillis()); // >= linger + request timeout
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.putAll(extra);
        return new KafkaProducer<>(p);
    }

    static KafkaConsumer<byte[], byte[]> consumer() {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        // No group.id: assign() only (consumer groups are not implemented in Holdfast yet).
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, (int) TIMEOUT.toMillis());
        p.put(ConsumerConfig.CHECK_CRCS_CONFIG, true);
        return new KafkaConsumer<>(p);
    }

    /** Reads every partition of `tps` from the beginning until `expected` records arrived. */
    static List<ConsumerRecord<byte[], byte[]>> readAll(Collection<TopicPartition> tps, int expected) {
        List<ConsumerRecord<byte[], byte[]>> out = new ArrayList<>();
        try (KafkaConsumer<byte[], byte[]> c = consumer()) {
            c.assign(tps);
            c.seekToBeginning(tps);
            long deadline = System.nanoTime() + TIMEOUT.toNanos();
            while (out.size() < expected && System.nanoTime() < deadline) {
                ConsumerRecords<byte[], byte[]> recs = c.poll(Duration.ofMillis(500));
                recs.forEach(out::add);
            }
            // One more short poll: nothing beyond what was produced may appear.
            c.poll(Duration.ofMillis(200)).forEach(out::add);
        }
        check(out.size() == expected, "read " + out.size() + " records, expected " + expected);
        return out;
    }

    static String str(byte[] b) {
        return b == null ? null : new String(b, StandardCharsets.UTF_8);
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    // ---------------------------------------------------------------- checks

    /** N keyed records with headers through one codec; read back: count, order, keys, headers. */
    static void produceConsume(String compression) throws Exception {
        final int n = 500;
        String topic = topicName(compression);
        createTopic(topic, 1);
        List<Future<RecordMetadata>> acks = new ArrayList<>();
        try (KafkaProducer<byte[], byte[]> p = producer(compression, Map.of(ProducerConfig.LINGER_MS_CONFIG, 5))) {
            for (int i = 0; i < n; i++) {
                // Repetitive values so every codec really compresses.
                String value = ("value-" + i + "-").repeat(20);
                ProducerRecord<byte[], byte[]> r = new ProducerRecord<>(topic, 0, bytes("key-" + i), bytes(value));
                r.headers().add("seq", bytes(Integer.toString(i)));
                r.headers().add("codec", bytes(compression));
                if (i % 7 == 0) {
                    r.headers().add("null-header", null);
                }
                acks.add(p.send(r));
            }
            p.flush();
        }
        for (int i = 0; i < n; i++) {
            RecordMetadata md = acks.get(i).get();
            check(md.offset() == i, "record " + i + " acked at offset " + md.offset());
        }
        TopicPartition tp = new TopicPartition(topic, 0);
        List<ConsumerRecord<byte[], byte[]>> recs = readAll(List.of(tp), n);
        for (int i = 0; i < n; i++) {
            ConsumerRecord<byte[], byte[]> r = recs.get(i);
            check(r.offset() == i, "record " + i + " has offset " + r.offset());
            check(("key-" + i).equals(str(r.key())), "record " + i + " key " + str(r.key()));
            check(("value-" + i + "-").repeat(20).equals(str(r.value())), "record " + i + " value mismatch");
            check(Integer.toString(i).equals(str(r.headers().lastHeader("seq").value())), "record " + i + " seq header");
            check(compression.equals(str(r.headers().lastHeader("codec").value())), "record " + i + " codec header");
            Header nh = r.headers().lastHeader("null-header");
            if (i % 7 == 0) {
                check(nh != null && nh.value() == null, "record " + i + " null-valued header lost");
            } else {
                check(nh == null, "record " + i + " has an unexpected header");
            }
        }
        System.out.println("produce-consume " + compression + ": " + n + " records, topic " + topic);
    }

    /** Many records over 3 partitions with 5 in-flight idempotent batches; per-key order kept. */
    static void bulkMultiPartition() throws Exception {
        final int n = 20000;
        final int keys = 50;
        String topic = topicName("bulk");
        createTopic(topic, 3);
        List<Future<RecordMetadata>> acks = new ArrayList<>();
        try (KafkaProducer<byte[], byte[]> p = producer("lz4", Map.of(
                ProducerConfig.LINGER_MS_CONFIG, 2,
                ProducerConfig.BATCH_SIZE_CONFIG, 16384,
                ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, 5))) {
            for (int i = 0; i < n; i++) {
                String key = "k" + (i % keys);
                acks.add(p.send(new ProducerRecord<>(topic, bytes(key), bytes(Integer.toString(i)))));
            }
            p.flush();
        }
        Map<Integer, Long> maxOffset = new HashMap<>();
        for (Future<RecordMetadata> f : acks) {
            RecordMetadata md = f.get();
            maxOffset.merge(md.partition(), md.offset(), Math::max);
        }
        List<TopicPartition> tps = new ArrayList<>();
        for (int part = 0; part < 3; part++) {
            tps.add(new TopicPartition(topic, part));
        }
        try (KafkaConsumer<byte[], byte[]> c = consumer()) {
            Map<TopicPartition, Long> end = c.endOffsets(tps);
            long total = 0;
            for (TopicPartition tp : tps) {
                long e = end.get(tp);
                total += e;
                check(e == maxOffset.getOrDefault(tp.partition(), -1L) + 1,
                        tp + " end offset " + e + " vs last ack " + maxOffset.get(tp.partition()));
            }
            check(total == n, "end offsets sum to " + total + ", expected " + n);
        }
        List<ConsumerRecord<byte[], byte[]>> recs = readAll(tps, n);
        Map<String, Integer> lastPerKey = new HashMap<>();
        Map<String, Integer> partitionOfKey = new HashMap<>();
        for (ConsumerRecord<byte[], byte[]> r : recs) {
            String k = str(r.key());
            int v = Integer.parseInt(str(r.value()));
            Integer prevPart = partitionOfKey.putIfAbsent(k, r.partition());
            check(prevPart == null || prevPart == r.partition(), "key " + k + " in two partitions");
            Integer prev = lastPerKey.put(k, v);
            check(prev == null || prev < v, "key " + k + ": " + v + " after " + prev);
        }
        System.out.println("bulk: " + n + " records over 3 partitions, partition ends " + maxOffset);
    }

    static void adminCheck() throws Exception {
        String topic = topicName("admin");
        try (Admin a = admin()) {
            DescribeClusterResult dc = a.describeCluster();
            Collection<Node> nodes = dc.nodes().get();
            Node controller = dc.controller().get();
            String clusterId = dc.clusterId().get();
            System.out.println("describeCluster: clusterId=" + clusterId + " nodes=" + nodes + " controller=" + controller);
            check(nodes.size() == 1, "one node expected, got " + nodes);

            NewTopic nt = new NewTopic(topic, 2, (short) 1)
                    .configs(Map.of("retention.ms", "3600000", "cleanup.policy", "delete"));
            a.createTopics(List.of(nt)).all().get();
            try {
                a.createTopics(List.of(new NewTopic(topic, 2, (short) 1))).all().get();
                throw new AssertionError("second createTopics of " + topic + " succeeded");
            } catch (ExecutionException e) {
                check(e.getCause() instanceof TopicExistsException, "duplicate create: " + e.getCause());
            }
            Set<String> names = a.listTopics().names().get();
            check(names.contains(topic), "listTopics lacks " + topic);

            TopicDescription d = a.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
            System.out.println("describeTopics: " + d);
            check(d.partitions().size() == 2, "partitions " + d.partitions().size());
            check(d.topicId() != null && !d.topicId().toString().equals("AAAAAAAAAAAAAAAAAAAAAA"), "topic id " + d.topicId());
            for (TopicPartitionInfo pi : d.partitions()) {
                check(pi.leader() != null && pi.replicas().size() == 1 && pi.isr().size() == 1, "partition " + pi);
            }
            // describeTopics by id too
            TopicDescription byId = a.describeTopics(org.apache.kafka.common.TopicCollection.ofTopicIds(List.of(d.topicId())))
                    .allTopicIds().get().get(d.topicId());
            check(byId != null && topic.equals(byId.name()), "describe by id: " + byId);

            ConfigResource res = new ConfigResource(ConfigResource.Type.TOPIC, topic);
            Config cfg = a.describeConfigs(List.of(res)).all().get().get(res);
            ConfigEntry ret = cfg.get("retention.ms");
            System.out.println("describeConfigs retention.ms: " + ret);
            check(ret != null && "3600000".equals(ret.value()), "retention.ms " + ret);
            check(ret.source() == ConfigEntry.ConfigSource.DYNAMIC_TOPIC_CONFIG, "retention.ms source " + ret.source());

            a.incrementalAlterConfigs(Map.of(res, List.of(
                    new AlterConfigOp(new ConfigEntry("retention.ms", "7200000"), AlterConfigOp.OpType.SET))))
                    .all().get();
            ret = a.describeConfigs(List.of(res)).all().get().get(res).get("retention.ms");
            check(ret != null && "7200000".equals(ret.value()), "retention.ms after incrementalAlterConfigs " + ret);

            ConfigResource broker = new ConfigResource(ConfigResource.Type.BROKER, Integer.toString(controller.id()));
            Config bcfg = a.describeConfigs(List.of(broker)).all().get().get(broker);
            System.out.println("describeConfigs broker: " + bcfg.entries().size() + " entries");

            a.createPartitions(Map.of(topic, NewPartitions.increaseTo(4))).all().get();
            d = a.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
            check(d.partitions().size() == 4, "after createPartitions: " + d.partitions().size());

            a.deleteTopics(List.of(topic)).all().get();
            // Deletion is synchronous on a single node: the next metadata must not have it.
            try {
                a.describeTopics(List.of(topic)).allTopicNames().get();
                throw new AssertionError("describeTopics of deleted " + topic + " succeeded");
            } catch (ExecutionException e) {
                check(e.getCause() instanceof UnknownTopicOrPartitionException, "describe deleted: " + e.getCause());
            }
            check(!a.listTopics().names().get().contains(topic), "listTopics still has " + topic);

            // Delete by topic id (DeleteTopics v6 with a null name).
            String topic2 = topic + "-byid";
            org.apache.kafka.common.Uuid id2 = a.createTopics(List.of(new NewTopic(topic2, 1, (short) 1)))
                    .topicId(topic2).get();
            a.deleteTopics(org.apache.kafka.common.TopicCollection.ofTopicIds(List.of(id2))).all().get();
            check(!a.listTopics().names().get().contains(topic2), "listTopics still has " + topic2);
        }
    }

    static void offsetsForTimes() throws Exception {
        final int n = 100;
        final long base = System.currentTimeMillis() - 3_600_000L;
        String topic = topicName("times");
        createTopic(topic, 1);
        try (KafkaProducer<byte[], byte[]> p = producer("none", Map.of(ProducerConfig.LINGER_MS_CONFIG, 0))) {
            for (int i = 0; i < n; i++) {
                p.send(new ProducerRecord<>(topic, 0, base + i * 1000L, bytes("k" + i), bytes("v" + i)));
                if (i % 10 == 9) {
                    p.flush(); // several batches, so the lookup must cross batch boundaries
                }
            }
            p.flush();
        }
        TopicPartition tp = new TopicPartition(topic, 0);
        try (KafkaConsumer<byte[], byte[]> c = consumer()) {
            Map<TopicPartition, Long> q = new LinkedHashMap<>();
            long[][] cases = {
                {base - 1, 0},            // before everything: first offset
                {base, 0},
                {base + 50_000L, 50},     // exact timestamp
                {base + 50_001L, 51},     // between two records: the next one
                {base + 95_500L, 96},
                {base + 99_000L, 99},
            };
            for (long[] cs : cases) {
                OffsetAndTimestamp ot = c.offsetsForTimes(Map.of(tp, cs[0])).get(tp);
                check(ot != null && ot.offset() == cs[1], "offsetsForTimes(" + (cs[0] - base) + ") = " + ot + ", expected " + cs[1]);
                check(ot.timestamp() == base + cs[1] * 1000L, "timestamp of " + ot);
            }
            OffsetAndTimestamp after = c.offsetsForTimes(Map.of(tp, base + 1_000_000L)).get(tp);
            check(after == null, "offsetsForTimes past the end = " + after);
            check(c.beginningOffsets(List.of(tp)).get(tp) == 0, "beginning offset");
            check(c.endOffsets(List.of(tp)).get(tp) == n, "end offset");
            // Seek by time and read from there.
            c.assign(List.of(tp));
            c.seek(tp, c.offsetsForTimes(Map.of(tp, base + 90_000L)).get(tp).offset());
            ConsumerRecords<byte[], byte[]> recs = ConsumerRecords.empty();
            long deadline = System.nanoTime() + TIMEOUT.toNanos();
            while (recs.isEmpty() && System.nanoTime() < deadline) {
                recs = c.poll(Duration.ofMillis(500));
            }
            ConsumerRecord<byte[], byte[]> first = recs.iterator().next();
            check(first.offset() == 90 && "k90".equals(str(first.key())), "first after seek: " + first);
        }
    }

    static int ackedLog(String topic, int n) throws Exception {
        // No flush until the end: sends stream, and many batches are in flight at the kill.
        final java.util.concurrent.atomic.AtomicInteger acked = new java.util.concurrent.atomic.AtomicInteger();
        final java.util.concurrent.atomic.AtomicInteger failed = new java.util.concurrent.atomic.AtomicInteger();
        try (KafkaProducer<byte[], byte[]> p = producer("lz4", Map.of(
                // Small batches, 5 in flight: the kill lands with produce requests outstanding.
                ProducerConfig.LINGER_MS_CONFIG, 1,
                ProducerConfig.BATCH_SIZE_CONFIG, 2048,
                ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, 5,
                ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, 10_000,
                ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, 120_000,
                ProducerConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 200))) {
            for (int i = 0; i < n; i++) {
                final int v = i;
                p.send(new ProducerRecord<>(topic, bytes("k" + (v % 16)), bytes(Integer.toString(v))), (md, e) -> {
                    synchronized (System.out) {
                        if (e == null) {
                            acked.incrementAndGet();
                            System.out.println("ACK " + v + " " + md.partition() + " " + md.offset());
                        } else {
                            failed.incrementAndGet();
                            System.out.println("ERR " + v + " " + e);
                        }
                        System.out.flush();
                    }
                });
            }
            p.flush();
        }
        System.out.println("DONE acked=" + acked.get() + " failed=" + failed.get());
        return 0;
    }

    static void deleteRecords() throws Exception {
        final int n = 50;
        String topic = topicName("delrec");
        createTopic(topic, 1);
        try (KafkaProducer<byte[], byte[]> p = producer("none", Map.of())) {
            for (int i = 0; i < n; i++) {
                p.send(new ProducerRecord<>(topic, 0, bytes("k" + i), bytes("v" + i)));
            }
            p.flush();
        }
        TopicPartition tp = new TopicPartition(topic, 0);
        try (Admin a = admin()) {
            long low = a.deleteRecords(Map.of(tp, RecordsToDelete.beforeOffset(20))).lowWatermarks().get(tp).get().lowWatermark();
            check(low == 20, "low watermark " + low);
        }
        try (KafkaConsumer<byte[], byte[]> c = consumer()) {
            check(c.beginningOffsets(List.of(tp)).get(tp) == 20, "beginning offset after deleteRecords");
        }
        List<ConsumerRecord<byte[], byte[]>> recs = readAll(List.of(tp), n - 20);
        check(recs.get(0).offset() == 20, "first offset " + recs.get(0).offset());
    }
}
