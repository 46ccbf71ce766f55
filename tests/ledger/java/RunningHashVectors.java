// Generates Hedera running-hash v3 test vectors with the JVM's own ObjectOutputStream, the way
// hedera-services MerkleTopic.updateRunningHashAndSequenceNumber writes them.
// Usage: java RunningHashVectors SEED COUNT
// Output, one vector per line, space separated hex/decimal fields:
//   prevHash payerShard payerRealm payerNum topicShard topicRealm topicNum seconds nanos seq
//   message serialisedStream runningHash
import java.io.ByteArrayOutputStream;
import java.io.ObjectOutputStream;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.Random;

public class RunningHashVectors {
    public static void main(String[] args) throws Exception {
        long seed = Long.parseLong(args[0]);
        int count = Integer.parseInt(args[1]);
        Random rnd = new Random(seed);
        HexFormat hex = HexFormat.of();
        for (int i = 0; i < count; i++) {
            // Mostly 48-byte previous hashes (the network's case), some odd lengths and a zero one.
            int prevLen = (i % 7 == 3) ? rnd.nextInt(100) : 48;
            byte[] prev = new byte[prevLen];
            if (i % 5 != 0) rnd.nextBytes(prev);
            long[] ids = new long[6];
            for (int k = 0; k < 6; k++) {
                ids[k] = (i % 4 == 0) ? rnd.nextInt(1000) : (rnd.nextLong() & Long.MAX_VALUE);
            }
            long seconds = rnd.nextLong() & Long.MAX_VALUE;
            if (i % 2 == 0) seconds = 1_600_000_000L + rnd.nextInt(400_000_000);
            int nanos = rnd.nextInt(1_000_000_000);
            long seq = (i % 3 == 0) ? 1 + rnd.nextInt(10_000) : rnd.nextLong() & Long.MAX_VALUE;
            int msgLen = (i % 6 == 0) ? 0 : rnd.nextInt(3000);
            byte[] message = new byte[msgLen];
            rnd.nextBytes(message);

            MessageDigest sha = MessageDigest.getInstance("SHA-384");
            ByteArrayOutputStream boas = new ByteArrayOutputStream();
            try (ObjectOutputStream out = new ObjectOutputStream(boas)) {
                out.writeObject(prev);
                out.writeLong(3L);
                for (int k = 0; k < 6; k++) out.writeLong(ids[k]);
                out.writeLong(seconds);
                out.writeInt(nanos);
                out.writeLong(seq);
                out.writeObject(sha.digest(message));
                out.flush();
            }
            byte[] stream = boas.toByteArray();
            byte[] hash = MessageDigest.getInstance("SHA-384").digest(stream);
            StringBuilder line = new StringBuilder();
            line.append(prevLen == 0 ? "-" : hex.formatHex(prev));
            for (int k = 0; k < 6; k++) line.append(' ').append(ids[k]);
            line.append(' ').append(seconds).append(' ').append(nanos).append(' ').append(seq);
            line.append(' ').append(msgLen == 0 ? "-" : hex.formatHex(message));
            line.append(' ').append(hex.formatHex(stream));
            line.append(' ').append(hex.formatHex(hash));
            System.out.println(line);
        }
    }
}
