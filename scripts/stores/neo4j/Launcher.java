/*
 * Local, Docker-free Neo4j 5.26 (community) server for tests.
 *
 * Run as a single-file Java program (JEP 330), on the classpath that
 * `mvn dependency:copy-dependencies` materialises from pom.xml beside this file:
 *
 *   java -Xms256m -Xmx1g <module flags> -cp "<libdir>/*" Launcher.java <homedir> <boltport>
 *
 * scripts/stores/neo4j.sh does exactly that.  The program starts an embedded
 * DatabaseManagementService with the Bolt connector on 127.0.0.1:<boltport>
 * (auth disabled, HTTP off), checks the default database with `RETURN 1`,
 * prints "READY bolt://127.0.0.1:<port>" and then blocks until the JVM is
 * asked to exit (SIGTERM / SIGINT), when a shutdown hook shuts the DBMS down
 * cleanly so that the store needs no recovery on the next start.
 *
 * Optional: a file <homedir>/conf/neo4j.conf, if present, is loaded first
 * (plain `key=value` Neo4j settings); the settings below are applied after it.
 */

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.BoltConnectorInternalSettings;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.connectors.HttpsConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.graphdb.Result;
import org.neo4j.graphdb.Transaction;
import org.neo4j.io.ByteUnit;
import org.neo4j.logging.Level;
import org.neo4j.logging.log4j.Log4jLogProvider;

public final class Launcher {
    private static final String HOST = "127.0.0.1";

    private Launcher() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: Launcher <homedir> <boltport>");
            System.exit(2);
        }
        final Path home = Path.of(args[0]).toAbsolutePath().normalize();
        final int port;
        try {
            port = Integer.parseInt(args[1]);
        } catch (NumberFormatException e) {
            System.err.println("boltport must be an integer, got: " + args[1]);
            System.exit(2);
            return;
        }
        Files.createDirectories(home);

        final long t0 = System.nanoTime();
        log("starting Neo4j (embedded) home=" + home + " bolt=" + HOST + ":" + port
                + " java=" + Runtime.version() + " maxHeap="
                + (Runtime.getRuntime().maxMemory() >> 20) + "m");

        DatabaseManagementServiceBuilder builder = new DatabaseManagementServiceBuilder(home);
        Path conf = home.resolve("conf").resolve("neo4j.conf");
        if (Files.isRegularFile(conf)) {
            log("loading extra settings from " + conf);
            builder.loadPropertiesFromFile(conf);
        }
        builder
                // User log (startup/shutdown, bolt address, warnings) goes to stdout,
                // which neo4j.sh redirects into $STATE/neo4j/neo4j.log.  The debug
                // log is still written under <home>/logs/debug.log.
                .setUserLogProvider(new Log4jLogProvider(System.out, Level.INFO))
                // Network: Bolt only, loopback only.
                .setConfig(GraphDatabaseSettings.default_listen_address, new SocketAddress(HOST))
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress(HOST, port))
                .setConfig(BoltConnector.advertised_address, new SocketAddress(HOST, port))
                .setConfig(BoltConnector.encryption_level, BoltConnector.EncryptionLevel.DISABLED)
                // Bolt waits 5 s + 5 s on shutdown by default (internal settings);
                // a test server has no clients worth waiting for.
                .setConfig(BoltConnectorInternalSettings.connection_shutdown_wait_time, Duration.ofSeconds(1))
                .setConfig(BoltConnectorInternalSettings.thread_pool_shutdown_wait_time, Duration.ofSeconds(1))
                .setConfig(HttpConnector.enabled, false)
                .setConfig(HttpsConnector.enabled, false)
                // Server-side routing would open a second listener (:7688); not needed.
                .setConfig(GraphDatabaseSettings.routing_enabled, false)
                .setConfig(GraphDatabaseSettings.auth_enabled, false)
                .setConfig(GraphDatabaseSettings.udc_enabled, false)
                // Small footprint: page cache is off-heap, on top of -Xmx.
                .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(256))
                // Transaction logs: keep little, rotate small, never preallocate
                // (the default preallocates 256 MiB files).
                .setConfig(GraphDatabaseSettings.keep_logical_logs, "false")
                .setConfig(GraphDatabaseSettings.logical_log_rotation_threshold, ByteUnit.mebiBytes(16))
                .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                .setConfig(GraphDatabaseSettings.check_point_interval_time, Duration.ofMinutes(5));

        final DatabaseManagementService managementService = builder.build();
        final CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            log("shutdown requested; stopping Neo4j");
            try {
                managementService.shutdown();
                log("STOPPED");
            } catch (Throwable t) {
                log("shutdown failed: " + t);
                t.printStackTrace(System.out);
            } finally {
                System.out.flush();
                stopped.countDown();
            }
        }, "kfm-neo4j-shutdown"));

        try {
            GraphDatabaseService db = managementService.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME);
            if (!db.isAvailable(Duration.ofSeconds(120).toMillis())) {
                throw new IllegalStateException("default database did not become available");
            }
            long one;
            try (Transaction tx = db.beginTx(); Result r = tx.execute("RETURN 1 AS one")) {
                one = ((Number) r.next().get("one")).longValue();
                tx.commit();
            }
            if (one != 1L) {
                throw new IllegalStateException("RETURN 1 returned " + one);
            }
        } catch (Throwable t) {
            log("FAILED to start: " + t);
            t.printStackTrace(System.out);
            System.out.flush();
            System.exit(1); // runs the shutdown hook
        }

        log(String.format("started in %.1f s", (System.nanoTime() - t0) / 1e9));
        System.out.println("READY bolt://" + HOST + ":" + port);
        System.out.flush();

        // Block until the shutdown hook has finished (SIGTERM/SIGINT -> hook).
        stopped.await();
    }

    private static void log(String msg) {
        System.out.println("[kfm-neo4j] " + msg);
        System.out.flush();
    }
}
