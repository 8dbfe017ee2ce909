// A small SFTP client on JSch (Debian's libjsch-java, /usr/share/java/jsch.jar),
// for the SFTP integration tests: runs a list of commands in one session.
//
// Build: javac -cp /usr/share/java/jsch.jar -d DIR JschClient.java
// Usage: java -cp /usr/share/java/jsch.jar:DIR JschClient \
//            HOST PORT USER PASSWORD KNOWN_HOSTS_FILE_OR_- COMMAND ARGS... [-- COMMAND ARGS...]...
// Commands:
//   put LOCAL REMOTE   upload (overwrites)
//   get REMOTE LOCAL   download
//   ls REMOTE          one name a line, . and .. left out, in the server's order
//   rename A B
//   rm REMOTE
//   mkdir REMOTE
//   stat REMOTE        "SIZE MTIME" (MTIME in seconds since the epoch)
// KNOWN_HOSTS `-` turns host key checking off (StrictHostKeyChecking=no); a
// file turns it on. The negotiated host key type goes to stderr as
// "hostkey TYPE". Any failure: its message on stderr, exit 1 (usage: exit 2).

import com.jcraft.jsch.ChannelSftp;
import com.jcraft.jsch.JSch;
import com.jcraft.jsch.Session;
import com.jcraft.jsch.SftpATTRS;
import com.jcraft.jsch.SftpException;
import java.util.ArrayList;
import java.util.List;
import java.util.Vector;

public class JschClient {
    private static final int TIMEOUT_MS = 30_000;

    public static void main(String[] args) {
        if (args.length < 6) {
            usage("too few arguments");
        }
        String host = args[0];
        int port;
        try {
            port = Integer.parseInt(args[1]);
        } catch (NumberFormatException e) {
            usage("bad port: " + args[1]);
            return;
        }
        String user = args[2];
        String password = args[3];
        String knownHosts = args[4];
        List<List<String>> commands = split(args, 5);
        for (List<String> command : commands) {
            check(command);
        }

        Session session = null;
        ChannelSftp sftp = null;
        String current = "connect";
        try {
            JSch jsch = new JSch();
            if (!knownHosts.equals("-")) {
                jsch.setKnownHosts(knownHosts);
            }
            session = jsch.getSession(user, host, port);
            session.setConfig("StrictHostKeyChecking", knownHosts.equals("-") ? "no" : "yes");
            session.setPassword(password);
            session.setConfig("PreferredAuthentications", "password");
            session.connect(TIMEOUT_MS);
            System.err.println("hostkey " + session.getHostKey().getType());
            sftp = (ChannelSftp) session.openChannel("sftp");
            sftp.connect(TIMEOUT_MS);
            for (List<String> command : commands) {
                current = String.join(" ", command);
                run(sftp, command);
            }
        } catch (SftpException e) {
            // id is the SFTP status code (2 no such file, 3 permission denied, 4 failure, ...).
            System.err.println(current + ": sftp status " + e.id + ": " + e.getMessage());
            System.exit(1);
        } catch (Exception e) {
            String message = e.getMessage() != null ? e.getMessage() : e.toString();
            System.err.println(current + ": " + message);
            System.exit(1);
        } finally {
            if (sftp != null) {
                sftp.disconnect();
            }
            if (session != null) {
                session.disconnect();
            }
        }
        System.exit(0);
    }

    private static void run(ChannelSftp sftp, List<String> c) throws SftpException {
        switch (c.get(0)) {
            case "put":
                sftp.put(c.get(1), c.get(2), ChannelSftp.OVERWRITE);
                break;
            case "get":
                sftp.get(c.get(1), c.get(2));
                break;
            case "ls": {
                Vector<?> entries = sftp.ls(c.get(1));
                for (Object o : entries) {
                    String name = ((ChannelSftp.LsEntry) o).getFilename();
                    if (!name.equals(".") && !name.equals("..")) {
                        System.out.println(name);
                    }
                }
                break;
            }
            case "rename":
                sftp.rename(c.get(1), c.get(2));
                break;
            case "rm":
                sftp.rm(c.get(1));
                break;
            case "mkdir":
                sftp.mkdir(c.get(1));
                break;
            case "stat": {
                SftpATTRS a = sftp.stat(c.get(1));
                System.out.println(a.getSize() + " " + a.getMTime());
                break;
            }
            default:
                throw new IllegalStateException("unknown command " + c.get(0));
        }
        System.out.flush();
    }

    // The commands from args[from..], separated by "--" arguments.
    private static List<List<String>> split(String[] args, int from) {
        List<List<String>> commands = new ArrayList<>();
        List<String> current = new ArrayList<>();
        for (int i = from; i < args.length; i++) {
            if (args[i].equals("--")) {
                if (current.isEmpty()) {
                    usage("empty command before --");
                }
                commands.add(current);
                current = new ArrayList<>();
            } else {
                current.add(args[i]);
            }
        }
        if (current.isEmpty()) {
            usage("empty command at the end");
        }
        commands.add(current);
        return commands;
    }

    private static void check(List<String> c) {
        int want;
        switch (c.get(0)) {
            case "put":
            case "get":
            case "rename":
                want = 2;
                break;
            case "ls":
            case "rm":
            case "mkdir":
            case "stat":
                want = 1;
                break;
            default:
                usage("unknown command: " + c.get(0));
                return;
        }
        if (c.size() - 1 != want) {
            usage(c.get(0) + " takes " + want + " argument" + (want == 1 ? "" : "s") + ", got " + (c.size() - 1));
        }
    }

    private static void usage(String why) {
        System.err.println("JschClient: " + why);
        System.err.println("usage: JschClient HOST PORT USER PASSWORD KNOWN_HOSTS_FILE_OR_- COMMAND ARGS... [-- COMMAND ARGS...]...");
        System.err.println("commands: put LOCAL REMOTE | get REMOTE LOCAL | ls REMOTE | rename A B | rm REMOTE | mkdir REMOTE | stat REMOTE");
        System.exit(2);
    }
}
