// The local cluster topology (scripts/cluster) through an outage of each
// service the nodes share, under traffic, used through the balancer as
// clients use it:
// - PostgreSQL stopped, then Redis killed: every node stays ready (a
//   dependency every node shares must not take them all out of the
//   balancer), new clients connect through the balancer on every transport
//   (WebSocket, polling, polling upgraded), and a publish reaches the
//   members on the publisher's node;
// - both back: cross-node delivery resumes, and every audit row written
//   during the outage (parse errors provoked on each node, spilled while
//   PostgreSQL was away) is in the table exactly once.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Cluster, publish, uniq } from "../cluster/lib/cluster.mjs";
import { REPO_ROOT } from "../cluster/lib/procs.mjs";
import { NODE_NAMES, startTopology } from "../cluster/lib/topology.mjs";

const ROOM = "outage:room";
const TRANSPORTS = ["websocket", "polling", "upgrade"];
/** Members of ROOM, enough for each node to hold some of every transport. */
const MEMBERS = 24;
/** A run dir of its own (tests/topology.rs stops the topologies of its subdirectories too). */
const runDir = join(process.env.TOPOLOGY_RUN_DIR || join(REPO_ROOT, "target", "tmp", `topology-${process.pid}`), "outage");

describe("the local topology through a PostgreSQL and a Redis outage", { timeout: 240_000 }, () => {
  const cluster = new Cluster("scripts/cluster outage");
  let lb, nodes;
  let members = [];
  const log = (line) => console.log(`# ${line}`);
  /** Markers of the parse errors provoked, by node. */
  const provoked = [];

  /** Which node holds `s`: an API publish to its own room counts local recipients. */
  async function locate(s) {
    for (const name of NODE_NAMES) {
      const res = await cluster.api(nodes[name], "POST", "/publish", { room: `me:${s.label}`, event: "whereami", data: name });
      assert.equal(res.status, 202, `publish to ${s.label}'s own room on ${name}: ${res.text}`);
      if (res.json.recipients === 1) return (s.nodeName = name);
    }
    assert.fail(`${s.label} is on no node`);
  }

  /** A client through the balancer, in ROOM and its own room, located. */
  async function join(label, transport) {
    const s = await cluster.client(lb, label, { transport, rooms: [`me:${label}`, ROOM], cookies: true });
    await locate(s);
    return s;
  }

  /** A parse error on each node (a polling POST with a packet of unknown type), audited. */
  async function provoke(phase) {
    for (const name of NODE_NAMES) {
      const marker = uniq(`outage-${phase}-${name}`);
      const base = `${nodes[name].url}/socket.io/?EIO=4&transport=polling`;
      const open = await (await fetch(base)).text();
      const sid = JSON.parse(open.slice(1)).sid;
      const res = await fetch(`${base}&sid=${sid}`, { method: "POST", body: `9${marker}` });
      assert.equal(res.status, 400, `${name}: the bad packet is refused`);
      provoked.push(marker);
    }
  }

  /** Every node answers /readyz 200 (ready), whatever Redis and PostgreSQL do. */
  async function allReady(what) {
    for (const name of NODE_NAMES) {
      const res = await fetch(`${nodes[name].url}/readyz`);
      const body = await res.text();
      assert.equal(res.status, 200, `${name} /readyz with ${what}: ${body}`);
    }
  }

  /** New clients through the balancer on every transport; they join and are counted. */
  async function newClientsOnEveryTransport(phase) {
    const fresh = [];
    for (const transport of TRANSPORTS) {
      for (let i = 0; i < 2; i++) fresh.push(await join(`${phase}-${transport}-${i}`, transport));
    }
    members.push(...fresh);
    return fresh;
  }

  /** `from` publishes a tagged message to ROOM; resolves once each of `to` has it. */
  async function reaches(from, to, timeoutMs) {
    const tag = uniq("outage-msg");
    await publish(from, ROOM, "news", { tag });
    await Promise.all(
      to.map((r) => r.inbox.until((inbox) => inbox.of("news").some((p) => p?.tag === tag), timeoutMs, `${r.label} gets ${tag}`)),
    );
    return tag;
  }

  before(
    cluster.wrap(async () => {
      ({ lb, nodes } = await startTopology(runDir, {
        ROOMCAST__SERVER__WORKERS: "2",
        // A quick retry once PostgreSQL is back.
        ROOMCAST__AUDIT__RETRY_INTERVAL_MS: "200",
      }));
      cluster.nodes.lb = lb;
      for (let i = 0; i < MEMBERS; i++) {
        const transport = TRANSPORTS[i % TRANSPORTS.length];
        members.push(await join(`member${i}-${transport}`, transport));
      }
      const on = new Set(members.map((s) => s.nodeName));
      assert.equal(on.size, NODE_NAMES.length, `members on every node: ${[...on].join(", ")}`);
      // Cross-node delivery works before the outage.
      await reaches(members[0], members.filter((s) => s !== members[0]), 10_000);
    }),
  );
  after(() => cluster.close());

  it(
    "serves through both outages and loses no audit row",
    cluster.wrap(async () => {
      // PostgreSQL away: the rows go to each node's spill file.
      await lb.down("postgres");
      await provoke("pg-down");
      await allReady("PostgreSQL down");
      const duringPg = await newClientsOnEveryTransport("pg-down");
      // Redis is still there: delivery crosses nodes.
      await reaches(duringPg[0], members.filter((s) => s !== duringPg[0]), 10_000);
      log("PostgreSQL down: nodes ready, new clients on every transport, delivery to every node");

      // Redis killed too.
      await lb.down("redis");
      await provoke("both-down");
      await allReady("PostgreSQL and Redis down");
      const duringBoth = await newClientsOnEveryTransport("both-down");
      for (const name of NODE_NAMES) {
        const here = members.filter((s) => s.nodeName === name);
        const from = duringBoth.find((s) => s.nodeName === name) ?? here[0];
        assert.ok(here.length > 1, `members on ${name}`);
        await reaches(from, here.filter((s) => s !== from), 10_000);
      }
      log(
        `PostgreSQL and Redis down: nodes ready, ${duringBoth.length} new clients on every transport, ` +
          "delivery within each node",
      );

      // Both back.
      await lb.up("redis");
      await lb.up("postgres");
      const from = members[0];
      const everyone = members.filter((s) => s !== from);
      const deadline = Date.now() + 30_000;
      for (;;) {
        try {
          await reaches(from, everyone, 3_000);
          break;
        } catch (err) {
          if (Date.now() > deadline) throw new Error(`cross-node delivery did not resume within 30 s: ${err.message}`);
        }
      }
      log("both back: delivery crosses nodes again");

      // Every row provoked meanwhile is in the table, exactly once.
      const list = provoked.map((m) => `'%${m}%'`).join(",");
      const query =
        `select count(*), count(distinct id) from audit_events where kind = 'parse_error' ` +
        `and excerpt like any (array[${list}])`;
      const counts = () =>
        execFileSync("psql", [lb.postgres, "-At", "-F", "|", "-c", query], { encoding: "utf8" }).trim().split("|").map(Number);
      let found = [0, 0];
      const rowsDeadline = Date.now() + 30_000;
      while ((found = counts())[0] < provoked.length && Date.now() < rowsDeadline) {
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.deepEqual(found, [provoked.length, provoked.length], "every provoked row, exactly once");
      await new Promise((r) => setTimeout(r, 1000));
      assert.deepEqual(counts(), [provoked.length, provoked.length], "and no row twice after a while");
      log(`audit: ${provoked.length} rows written during the outages, each once in the table`);
      const dropped = cluster.disconnected();
      log(`clients that saw a disconnect: ${dropped.length}`);
    }),
  );
});
