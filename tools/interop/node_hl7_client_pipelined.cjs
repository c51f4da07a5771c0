// Sends every `*.hl7` file of a directory (in name order) to an MLLP server
// with the real npm `node-hl7-client`, pipelined: `waitAck: false`, all
// messages written in one tick before any ACK is read. Prints one JSON line
// per ACK the client received and a final summary line; exits 0 once every
// message has an ACK, 2 on a client or parse error, 3 at the deadline.
//
// usage: node node_hl7_client_pipelined.cjs PORT HL7_VERSION MESSAGE_DIR
//
// ACKs are what the package's own response handler receives
// (`res.getMessage()`). Several ACKs often arrive in one socket read; the
// package then parses that text as a batch and calls the handler once per
// ACK, in order. The summary line reports how many socket reads carried them
// (`raw_reads`, from the package's `data.raw` event) and how many messages
// the client had written before the first ACK was read.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { Client, Message } = require("node-hl7-client");

const DEADLINE_MS = 30_000;
const MESSAGES_MAX = 10_000;

const [portArg, version, dir] = process.argv.slice(2);
if (!portArg || !version || !dir) {
  console.error("usage: node node_hl7_client_pipelined.cjs PORT HL7_VERSION MESSAGE_DIR");
  process.exit(64);
}
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const files = fs.readdirSync(dir).filter((f) => f.endsWith(".hl7")).sort();
if (files.length === 0 || files.length > MESSAGES_MAX) {
  console.error(`expected 1..${MESSAGES_MAX} .hl7 files in ${dir}, found ${files.length}`);
  process.exit(64);
}
const messages = files.map((f) => new Message({ text: fs.readFileSync(path.join(dir, f), "utf8") }));

let acks = 0;
let dataErrors = 0;
let sentBeforeFirstAck = -1;
let rawReads = 0;
let finished = false;

const finish = (code, why) => {
  if (finished) return;
  finished = true;
  emit({ event: "done", why, acks, data_errors: dataErrors,
    raw_reads: rawReads, sent: conn.stats.sent, sent_before_first_ack: sentBeforeFirstAck });
  clearTimeout(deadline);
  conn.close().finally(() => process.exit(code));
};
const deadline = setTimeout(() => finish(3, "deadline"), DEADLINE_MS);

const client = new Client({ host: "127.0.0.1", version });
const conn = client.createConnection(
  { port: Number(portArg), waitAck: false, maxConnectionAttempts: 1, maxAttempts: 1 },
  (res) => {
    const ack = res.getMessage();
    acks += 1;
    emit({ event: "ack", n: acks, msh9: ack.get("MSH.9").toString(),
      msa1: ack.get("MSA.1").toString(), msa2: ack.get("MSA.2").toString() });
    if (acks === messages.length) finish(0, "all acked");
  },
);

// Emitted with the de-framed text of each socket read that completed a
// reply, before the handler runs for the ACKs it holds.
conn.on("data.raw", () => {
  rawReads += 1;
  if (sentBeforeFirstAck < 0) sentBeforeFirstAck = conn.stats.sent;
});
// The package could not parse what it read (for example a read that ended
// inside a reply): the ACKs in it are lost to the handler, so fail now.
conn.on("data.error", (e) => {
  dataErrors += 1;
  emit({ event: "data.error", error: String(e) });
  finish(2, "data error");
});
conn.on("client.error", (e) => { emit({ event: "client.error", error: String(e) }); finish(2, "client error"); });
conn.on("connect", () => {
  // Pipelined: every sendMessage below writes to the socket synchronously
  // (ready state CONNECTED, waitAck false), so all frames leave before the
  // first ACK can be read.
  for (const m of messages) conn.sendMessage(m).catch((e) => {
    emit({ event: "send.error", error: String(e) });
    finish(2, "send error");
  });
  emit({ event: "sent", count: conn.stats.sent });
});
