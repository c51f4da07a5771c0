// Sends every `*.hl7` file of a directory (in name order) to an MLLP server
// with the real npm `simple-hl7` TCP client, one message at a time (it
// refuses to send while awaiting a response and, without keepalive, opens a
// new connection per message). Prints one JSON line per ACK and exits 0 once
// every message has one, 2 on a client error, 3 at the deadline.
//
// usage: node simple_hl7_send.cjs PORT MESSAGE_DIR
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const hl7 = require("simple-hl7");

const DEADLINE_MS = 30_000;
const MESSAGES_MAX = 10_000;

const [portArg, dir] = process.argv.slice(2);
if (!portArg || !dir) {
  console.error("usage: node simple_hl7_send.cjs PORT MESSAGE_DIR");
  process.exit(64);
}
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const files = fs.readdirSync(dir).filter((f) => f.endsWith(".hl7")).sort();
if (files.length === 0 || files.length > MESSAGES_MAX) {
  console.error(`expected 1..${MESSAGES_MAX} .hl7 files in ${dir}, found ${files.length}`);
  process.exit(64);
}
const deadline = setTimeout(() => { emit({ event: "done", why: "deadline" }); process.exit(3); }, DEADLINE_MS);
const client = hl7.Server.createTcpClient("127.0.0.1", Number(portArg));

const sendNext = (i) => {
  if (i === files.length) {
    emit({ event: "done", why: "all acked", acks: i });
    clearTimeout(deadline);
    client.close();
    return;
  }
  // The client writes `msg.toString()` inside the MLLP frame: send the file's text as is.
  const text = fs.readFileSync(path.join(dir, files[i]), "utf8");
  client.send(text, (err, ack) => {
    if (err) {
      emit({ event: "error", n: i + 1, error: String(err) });
      process.exit(2);
    }
    const msa = ack.getSegment("MSA");
    emit({ event: "ack", n: i + 1, msh9: ack.header.getField(7),
      msa1: msa ? msa.getField(1) : "", msa2: msa ? msa.getField(2) : "" });
    // The client clears its awaiting-response flag and closes the socket
    // only after this callback returns: send the next one on the next turn.
    setImmediate(() => sendNext(i + 1));
  });
};
sendNext(0);
