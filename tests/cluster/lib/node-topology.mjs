// The local topology of scripts/cluster with Node.js in place of roomcast:
// HAProxy with the same deploy/haproxy.cfg (sticky cookie, leastconn,
// `option redispatch`, health checks on /readyz) in front of three Node.js
// socket.io 4.8 servers (lib/node-server.mjs) sharing a private Redis
// through the official @socket.io/redis-adapter, each on a port of its own
// that it keeps across restarts. It offers what tests use of
// topology.mjs's startTopology: `lb` (`url`, `log`, `kill`,
// `waitServerUp`) and `nodes` by name (`url`, `api` for the HTTP publish
// endpoint, `stop("TERM"|"KILL")`, `start()`, `sockets()`), so one test
// scenario runs against both.

import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { resolve } from "node:path";
import { NODE_NAMES } from "./topology.mjs";
import { API_KEY, REPO_ROOT, freePort, sleep, spawnLogged, startNodeServer, startRedis } from "./procs.mjs";

const HAPROXY_CFG = resolve(REPO_ROOT, "deploy", "haproxy.cfg");
/** How long a Node.js server may take to exit after SIGTERM (node-server.mjs exits within 5 s). */
const TERM_BOUND_MS = 10_000;

/**
 * Starts Redis, three Node.js servers (`args`: more node-server.mjs options,
 * e.g. "--recovery"; every one gets `--api-key` API_KEY) and HAProxy;
 * `runDir` is created for what a test writes there.
 */
export async function startNodeTopology(runDir, { args = [] } = {}) {
  mkdirSync(runDir, { recursive: true });
  const procs = [];
  const redis = await startRedis();
  const ports = new Set();
  while (ports.size < NODE_NAMES.length + 1) ports.add(await freePort());
  const [lbPort, ...nodePorts] = [...ports];
  const serverArgs = [...args, "--api-key", API_KEY];

  const nodes = {};
  for (const [i, name] of NODE_NAMES.entries()) {
    const port = nodePorts[i];
    const node = {
      name,
      url: `http://127.0.0.1:${port}`,
      /** Where its HTTP publish endpoint (/api/v1/publish) is. */
      api: `http://127.0.0.1:${port}`,
      server: null,
      async start() {
        this.server = await startNodeServer(name, redis.url, { port, args: serverArgs });
        procs.push(this.server.proc);
      },
      /** "TERM": io.close() (sockets closed with "server shutting down"), awaited; "KILL": a crash. */
      async stop(signal = "TERM") {
        const proc = this.server.proc;
        if (signal === "KILL") return proc.kill();
        proc.signal("SIGTERM");
        const exited = await Promise.race([proc.exit.then(() => true), sleep(TERM_BOUND_MS).then(() => false)]);
        if (!exited) {
          await proc.kill();
          throw new Error(`${name} did not exit within ${TERM_BOUND_MS} ms of SIGTERM`);
        }
      },
      /** Engine.IO clients it holds (its /readyz says). */
      async sockets() {
        const res = await fetch(`${this.url}/readyz`, { signal: AbortSignal.timeout(3000) });
        return (await res.json()).clients;
      },
    };
    nodes[name] = node;
  }
  await Promise.all(Object.values(nodes).map((n) => n.start()));

  const env = {
    ...process.env,
    ROOMCAST_LB_BIND: `127.0.0.1:${lbPort}`,
    ROOMCAST_LB_COOKIE_KEY: "local-node-cluster",
    // Node.js servers hold their sessions: sticky, as in the comparison run.
    ROOMCAST_LB_STICKY: "true",
    ROOMCAST_HEALTH_PATH: "/readyz",
    ...Object.fromEntries(NODE_NAMES.map((name, i) => [`ROOMCAST_NODE_${i + 1}`, `127.0.0.1:${nodePorts[i]}`])),
  };
  execFileSync("haproxy", ["-c", "-q", "-f", HAPROXY_CFG], { env, stdio: "inherit" });
  const haproxy = spawnLogged("haproxy (Node.js servers)", "haproxy", ["-db", "-f", HAPROXY_CFG], { env });
  procs.push(haproxy);
  const lb = {
    name: "lb",
    kind: "haproxy",
    url: `http://127.0.0.1:${lbPort}`,
    runDir,
    log: (max = 150) => [redis.log(), ...procs.map((p) => p.log(max))].join("\n"),
    kill: async () => {
      await Promise.allSettled(procs.map((p) => p.kill()));
      await redis.kill();
    },
    /** Resolves once HAProxy last logged server `name` UP (or never logged it DOWN). */
    waitServerUp: async (name, timeoutMs = 20_000) => {
      const re = new RegExp(`^Server roomcast/${name} is (UP|DOWN)\\b`);
      const state = () => haproxy.lines.reduce((s, l) => re.exec(l)?.[1] ?? s, "UP");
      const deadline = Date.now() + timeoutMs;
      while (state() !== "UP") {
        if (Date.now() > deadline) throw new Error(`HAProxy did not have ${name} up within ${timeoutMs} ms`);
        await sleep(100);
      }
    },
  };
  // Ready once the balancer answers a health check through to a server.
  const deadline = Date.now() + 15_000;
  for (;;) {
    const ok = await fetch(`${lb.url}/readyz`, { signal: AbortSignal.timeout(1000) }).then((r) => r.ok, () => false);
    if (ok) break;
    if (haproxy.exited || Date.now() > deadline) {
      await lb.kill();
      throw new Error(`HAProxy in front of the Node.js servers did not come up\n${haproxy.log()}`);
    }
    await sleep(100);
  }
  return { lb, nodes };
}
