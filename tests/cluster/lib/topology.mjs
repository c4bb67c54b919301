// The local cluster topology of scripts/cluster (HAProxy with
// deploy/haproxy.cfg in front of three roomcast nodes, a private Redis and
// a private PostgreSQL), started on free ports in a run dir of its own, as
// a node of a Cluster: `cluster.nodes.lb` is the balancer, so
// `cluster.client(lb, ...)` connects through it, and `Cluster.close()` runs
// `scripts/cluster stop` (its `kill`) and shows its logs on failure. Each
// roomcast node can be stopped (`nodes.node1.stop("TERM")`: drained, or
// "KILL": a crash) and started again (`.start()`, same ports and
// environment) through `scripts/cluster stop-node` / `start-node`, and the
// balancer's view of it awaited (`lb.waitServerUp("node1")`).
// `locate` finds which node holds each client's session.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { API_KEY, REPO_ROOT, freePort } from "./procs.mjs";

const SCRIPT = resolve(REPO_ROOT, "scripts", "cluster");
export const NODE_NAMES = ["node1", "node2", "node3"];

/** Runs scripts/cluster `command`; resolves with its output, rejects with it. */
function runScript(command, env, timeoutMs) {
  return new Promise((resolveRun, rejectRun) => {
    execFile(SCRIPT, command.split(" "), { cwd: REPO_ROOT, env, timeout: timeoutMs, killSignal: "SIGKILL" }, (err, stdout, stderr) => {
      const output = `$ scripts/cluster ${command}\n${stdout}${stderr}`;
      if (err) rejectRun(new Error(`scripts/cluster ${command} failed (${err.code ?? err.signal}):\n${output}`));
      else resolveRun(output);
    });
  });
}

/** `count` distinct ports that were free a moment ago. */
async function freePorts(count) {
  const ports = new Set();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

function tail(file, max) {
  if (!existsSync(file)) return `[${file}: none]`;
  const lines = readFileSync(file, "utf8").split("\n");
  const shown = lines.slice(-max);
  return [...(lines.length > max ? [`[... ${lines.length - max} earlier lines]`] : []), ...shown].join("\n");
}

/**
 * The state HAProxy last logged for server `name` of the roomcast backend
 * ("UP" or "DOWN"), or "UP" when it logged none (servers start up).
 */
function serverState(runDir, name) {
  const file = join(runDir, "haproxy.log");
  if (!existsSync(file)) return "UP";
  const re = new RegExp(`^Server roomcast/${name} is (UP|DOWN)\\b`);
  let state = "UP";
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const m = re.exec(line);
    if (m) state = m[1];
  }
  return state;
}

/**
 * Starts the topology in `runDir` (every port free and chosen here; `env`
 * adds variables, e.g. ROOMCAST__* for the nodes). Resolves with
 * `{lb, nodes}`: `lb` is the balancer as a Cluster node (`url`, `log`,
 * `kill` = scripts/cluster stop, `down`/`up` of Redis or PostgreSQL), `nodes`
 * the roomcast nodes by name (`url` straight to the node, `admin` its admin
 * listener, `pid()`, `stop(signal)`, `start()`).
 */
export async function startTopology(runDir, env = {}) {
  const [lbPort, redisPort, pgPort, ...ports] = await freePorts(9);
  const [nodePorts, adminPorts] = [ports.slice(0, 3), ports.slice(3)];
  const fullEnv = {
    ...process.env,
    ROOMCAST_CLUSTER_DIR: runDir,
    ROOMCAST_CLUSTER_PORT: String(lbPort),
    ROOMCAST_CLUSTER_REDIS_PORT: String(redisPort),
    ROOMCAST_CLUSTER_PG_PORT: String(pgPort),
    ROOMCAST_CLUSTER_NODE_PORTS: nodePorts.join(" "),
    ROOMCAST_CLUSTER_ADMIN_PORTS: adminPorts.join(" "),
    ROOMCAST_CLUSTER_API_KEY: API_KEY,
    ...env,
  };
  const outputs = [await runScript("start", fullEnv, 120_000)];
  const vars = Object.fromEntries(
    readFileSync(join(runDir, "cluster.env"), "utf8")
      .split("\n")
      .filter((l) => l.includes("="))
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
  const nodes = Object.fromEntries(
    NODE_NAMES.map((name) => [
      name,
      {
        name,
        url: vars[`ROOMCAST_CLUSTER_${name.toUpperCase()}`],
        /** The node's admin listener (/metrics, /dashboard, the HTTP API). */
        admin: vars[`ROOMCAST_CLUSTER_${name.toUpperCase()}_ADMIN`],
        pid: () => Number(readFileSync(join(runDir, `${name}.pid`), "utf8").trim()),
        /**
         * Signals the node: "TERM" drains it and resolves once it has exited
         * (rejects when it did not within scripts/cluster's bound), "KILL"
         * ends it at once (a crash).
         */
        stop: async (signal = "TERM") => outputs.push(await runScript(`stop-node ${name} ${signal}`, fullEnv, 60_000)),
        /** Starts it again (same ports and environment); resolves once it is ready. */
        start: async () => outputs.push(await runScript(`start-node ${name}`, fullEnv, 60_000)),
      },
    ]),
  );
  const lb = {
    name: "lb",
    kind: "haproxy",
    url: vars.ROOMCAST_CLUSTER_URL,
    runDir,
    /** The PostgreSQL all nodes write their audit log to. */
    postgres: vars.ROOMCAST_CLUSTER_POSTGRES,
    /** HAProxy's log lines (one per request, `option httplog`). */
    accessLog: () => readFileSync(join(runDir, "haproxy.log"), "utf8").split("\n"),
    log: (max = 150) =>
      [
        ...outputs,
        ...["haproxy", ...NODE_NAMES, "redis"].map((n) => `--- ${n} ---\n${tail(join(runDir, `${n}.log`), max)}`),
      ].join("\n"),
    kill: async () => {
      outputs.push(await runScript("stop", fullEnv, 60_000).catch((err) => err.message));
    },
    /**
     * Resolves once HAProxy's health checks have the roomcast node `name`
     * up (after a restart: `rise 2` checks a second apart); rejects after
     * `timeoutMs`.
     */
    waitServerUp: async (name, timeoutMs = 20_000) => {
      const deadline = Date.now() + timeoutMs;
      while (serverState(runDir, name) !== "UP") {
        if (Date.now() > deadline) throw new Error(`HAProxy did not have ${name} up within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    /** An outage of a shared service ("redis": SIGKILL, "postgres": stopped at once). */
    down: async (service) => outputs.push(await runScript(`down ${service}`, fullEnv, 60_000)),
    /** The service back, on the same port and data. */
    up: async (service) => outputs.push(await runScript(`up ${service}`, fullEnv, 60_000)),
  };
  return { lb, nodes };
}

/**
 * Which node holds each of `sockets` (anything with a `label` whose client
 * subscribed to its private room `me:<label>`), asking the nodes named
 * `candidates` through `cluster`'s API (an API publish to that room counts
 * the recipients of the node it is sent to), `batch` sockets at a time.
 * Sets each one's `nodeName`; fails unless exactly one node holds it.
 */
export async function locate(cluster, nodes, sockets, candidates = NODE_NAMES, batch = 25) {
  for (let i = 0; i < sockets.length; i += batch) {
    await Promise.all(
      sockets.slice(i, i + batch).map(async (s) => {
        const found = [];
        for (const name of candidates) {
          const res = await cluster.api(nodes[name], "POST", "/publish", { room: `me:${s.label}`, event: "whereami", data: name });
          assert.equal(res.status, 202, `publish to ${s.label}'s own room on ${name}: ${res.text}`);
          if (res.json.recipients === 1) found.push(name);
        }
        assert.equal(found.length, 1, `${s.label} (${s.id}) is on exactly one of ${candidates.join(", ")}: ${found.join(", ")}`);
        s.nodeName = found[0];
      }),
    );
  }
}
