"""Sends every `*.hl7` file of a directory (in name order) to an MLLP server
the way hl7apy users do: hl7apy 1.3.5 ships an MLLP *server* only
(`hl7apy.mllp.MLLPServer`), so each message is parsed by hl7apy, serialised
with its own `Message.to_mllp()`, and sent over a new TCP connection (one
connection per message); the reply is parsed by hl7apy's `parse_message` with
STRICT validation, which rejects an ACK whose structure does not match the
HL7 version it declares. Prints one JSON line per ACK; exits 0 when every
message got one, 2 on the first failure.

usage: python3 hl7apy_send.py PORT MESSAGE_DIR
"""
import json
import os
import socket
import sys

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

TIMEOUT_S = 30
REPLY_BYTES_MAX = 1 << 20
MESSAGES_MAX = 10_000


def read_reply(sock):
    """Bytes up to and including the first 0x1C 0x0D, bounded in size."""
    data = b""
    while b"\x1c\x0d" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed after {len(data)} reply bytes")
        data += chunk
        if len(data) > REPLY_BYTES_MAX:
            raise RuntimeError("reply larger than REPLY_BYTES_MAX")
    start = data.index(b"\x0b") + 1
    return data[start:data.index(b"\x1c\x0d")].decode("utf-8")


def main():
    port, directory = int(sys.argv[1]), sys.argv[2]
    files = sorted(f for f in os.listdir(directory) if f.endswith(".hl7"))
    assert 0 < len(files) <= MESSAGES_MAX, f"expected 1..{MESSAGES_MAX} messages"
    for n, name in enumerate(files, start=1):
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            text = f.read().replace("\r\n", "\r").replace("\n", "\r").strip("\r")
        message = parse_message(text, find_groups=False)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
            sock.sendall(message.to_mllp().encode("utf-8"))
            reply = read_reply(sock)
        ack = parse_message(reply, validation_level=VALIDATION_LEVEL.STRICT, find_groups=False)
        print(json.dumps({
            "event": "ack", "n": n,
            "sent_control_id": message.msh.msh_10.to_er7(),
            "msh9": ack.msh.msh_9.to_er7(),
            "msa1": ack.msa.msa_1.to_er7(),
            "msa2": ack.msa.msa_2.to_er7(),
        }), flush=True)
    print(json.dumps({"event": "done", "why": "all acked", "acks": len(files)}), flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report, then fail: the test shows this line
        print(json.dumps({"event": "error", "error": f"{type(e).__name__}: {e}"}), flush=True)
        sys.exit(2)
