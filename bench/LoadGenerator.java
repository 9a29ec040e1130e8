import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.locks.LockSupport;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * The load generator of bench/kafka.py's latency measurement: produces prepared records to
 * the predictions and labels topics at a set rate, paced by the clock, and writes down when
 * each label was handed to the producer and when the broker acknowledged it.
 *
 * <p>Why Java: kafka-python's producer costs ~40 us of Python per record, so at 20,000
 * records/s the generator itself took ~0.8 of this 2-core machine and could not reach the
 * rate asked; the replica measured was starved of CPU by its own load. The Java client (the
 * broker's own kafka-clients jar) does the same sends for a small part of that.
 *
 * <p>Arguments: bootstrap, predictions topic, labels topic, records/s, input file (one record
 * per line: {@code P|L <tab> key <tab> JSON value}), output file, and optionally two warm-up
 * topics and the warm-up's length in seconds. With them, it first sends the first records
 * to the warm-up topics at the same rate, through the same code (see {@link #produce}).
 * Prints "ready" once its producer knows the topics and is warm, waits for a line "go" on
 * stdin, produces, and writes one line
 * {@code <line index> <sent> <acknowledged>} per label (epoch microseconds: handed to the
 * producer; the producer's callback saw the broker's acknowledgement, 0 if it failed), then
 * "done <records/s>".
 *
 * <p>The acknowledgement is an upper bound of when the label was in the log (the callback
 * runs on the producer's I/O thread, late when this process is short of CPU): the time from
 * it to a weights version is the part of the latency that is the replica's and the output
 * path's, with the input path's delays (this producer's batching and the broker's append)
 * left out.
 */
public final class LoadGenerator {
    private LoadGenerator() {}

    /**
     * Records due within this long are sent at once, not each after a park of its own. At
     * 80,000 records/s the gap is 12.5 us: a park per gap is a futex wait and a wake-up each
     * (and overshoots by Linux's 50 us timer slack anyway), which took the generator ~0.45
     * of this 2-core machine's cores; pacing by the millisecond, below the producer's 5 ms
     * linger (so the broker gets the same batches), ~0.26. A label's send time is still
     * noted when it is handed to the producer, so a label sent early is not timed early.
     */
    private static final long PARK_AT_LEAST_NANOS = 1_000_000L;

    public static void main(String[] args) throws IOException {
        String bootstrap = args[0];
        String predictions = args[1];
        String labels = args[2];
        double rate = Double.parseDouble(args[3]);
        List<String> lines = Files.readAllLines(Path.of(args[4]), StandardCharsets.UTF_8);
        int count = lines.size();
        boolean[] isLabel = new boolean[count];
        byte[][] keys = new byte[count][];
        byte[][] values = new byte[count][];
        for (int i = 0; i < count; i++) {
            String line = lines.get(i);
            int first = line.indexOf('\t');
            int second = line.indexOf('\t', first + 1);
            isLabel[i] = line.charAt(0) == 'L';
            keys[i] = line.substring(first + 1, second).getBytes(StandardCharsets.UTF_8);
            values[i] = line.substring(second + 1).getBytes(StandardCharsets.UTF_8);
        }
        Properties settings = new Properties();
        settings.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        // every record acknowledged by the log; 5 ms batching, the Java client's default
        // since Kafka 4.0 (KIP-1030): with 1 ms the broker took ~0.75 of the 2 cores at
        // 25,000 records/s and the replica's commits waited on it
        settings.put(ProducerConfig.ACKS_CONFIG, "all");
        settings.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        settings.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        settings.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        long[] sentMicros = new long[count];
        long[] ackedMicros = new long[count]; // written by the I/O thread, read after flush
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(settings)) {
            producer.partitionsFor(predictions);
            producer.partitionsFor(labels);
            if (args.length >= 9) {
                // This JVM starts cold: its first second of sending ran interpreted and
                // compiling, 0.68-0.98 of the machine's 2 cores against ~0.3 once warm,
                // taken from the broker and the replica in the measured run's start. A
                // producer feeding a deployed replica is warm and elsewhere, so the same
                // sends warm it up first, to topics the replica does not read.
                int warmUp = (int) Math.min(count, rate * Double.parseDouble(args[8]));
                produce(producer, args[6], args[7], rate, warmUp, isLabel, keys, values,
                        new long[warmUp], new long[warmUp]);
                producer.flush();
            }
            // The prepared records (~1.8M keys and values) were read into the young
            // generation; one full collection now moves them to the old one before the
            // clock starts. Left to the run, the first young collection copied them (a
            // 67 ms pause, ~6,000 records late, in the first seconds); later ones, 5-15 ms.
            System.gc();
            System.out.println("ready");
            System.out.flush();
            BufferedReader input = new BufferedReader(
                    new InputStreamReader(System.in, StandardCharsets.UTF_8));
            if (!"go".equals(input.readLine())) {
                return;
            }
            long start = System.nanoTime();
            produce(producer, predictions, labels, rate, count, isLabel, keys, values,
                    sentMicros, ackedMicros);
            producer.flush();
            double seconds = (System.nanoTime() - start) / 1e9;
            try (PrintWriter output = new PrintWriter(Files.newBufferedWriter(Path.of(args[5])))) {
                for (int i = 0; i < count; i++) {
                    if (isLabel[i]) {
                        output.println(i + " " + sentMicros[i] + " " + ackedMicros[i]);
                    }
                }
            }
            System.out.println("done " + (count / seconds));
            System.out.flush();
        }
    }

    /**
     * Sends the first {@code count} records at {@code rate} records/s, paced by the clock,
     * noting each label's hand-over and acknowledgement. One method for the warm-up and the
     * measured run, so the run executes the code the warm-up compiled.
     */
    private static void produce(KafkaProducer<byte[], byte[]> producer, String predictions,
            String labels, double rate, int count, boolean[] isLabel, byte[][] keys,
            byte[][] values, long[] sentMicros, long[] ackedMicros) {
        long start = System.nanoTime();
        for (int i = 0; i < count; i++) {
            long wait = start + (long) (i * 1e9 / rate) - System.nanoTime();
            if (wait > PARK_AT_LEAST_NANOS) {
                LockSupport.parkNanos(wait);
            }
            if (isLabel[i]) {
                sentMicros[i] = epochMicros();
                int index = i;
                producer.send(new ProducerRecord<>(labels, keys[i], values[i]),
                        (metadata, failure) -> {
                            if (failure == null) {
                                ackedMicros[index] = epochMicros();
                            }
                        });
            } else {
                producer.send(new ProducerRecord<>(predictions, keys[i], values[i]));
            }
        }
    }

    private static long epochMicros() {
        Instant now = Instant.now();
        return now.getEpochSecond() * 1_000_000L + now.getNano() / 1_000;
    }
}
