"""A capture relay for end-to-end tests: a real SMTP server on a socket, written with asyncio.

It splits lines on LF alone, as the relays vulnerable to SMTP smuggling do (SECURITY.md
SM-05): if Plenary ever sent a bare "<LF>.<LF>", this relay would end DATA there and read
what follows as commands, and the test would see an extra transaction.

Every accepted transaction is appended to OUT/messages.jsonl as
{"mail_from", "rcpts", "data" (latin-1 text)}. Control files in OUT change behaviour live:
  OUT/refuse   exists -> every RCPT gets 451 4.3.0 (temporary)
  OUT/reject   lines of addresses that get 550 5.1.1 at RCPT (permanent)
Prints "relay listening PORT" once ready.
"""
import asyncio, json, os, sys

OUT = sys.argv[1]
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 0
LOG = os.path.join(OUT, "messages.jsonl")


def refused():
    return os.path.exists(os.path.join(OUT, "refuse"))


def rejected(addr):
    p = os.path.join(OUT, "reject")
    if not os.path.exists(p):
        return False
    with open(p) as f:
        return addr.lower() in {l.strip().lower() for l in f}


async def session(reader, writer):
    def send(line):
        writer.write((line + "\r\n").encode())

    send("220 capture ESMTP")
    mail_from, rcpts, data, in_data = None, [], [], False
    try:
        while True:
            raw = await reader.readline()  # LF-terminated, like a lenient relay
            if not raw:
                break
            line = raw.decode("latin-1")
            if in_data:
                text = line.rstrip("\n").rstrip("\r")
                if text == ".":
                    with open(LOG, "a") as f:
                        f.write(json.dumps({"mail_from": mail_from, "rcpts": rcpts, "data": "".join(data)}) + "\n")
                    send("250 2.0.0 queued")
                    mail_from, rcpts, data, in_data = None, [], [], False
                else:
                    if text.startswith(".."):
                        line = line[1:]
                    data.append(line)
                await writer.drain()
                continue
            cmd = line.strip()
            up = cmd.upper()
            if up.startswith("EHLO"):
                send("250-capture")
                send("250-PIPELINING")
                send("250-8BITMIME")
                send("250 SIZE 104857600")
            elif up.startswith("HELO"):
                send("250 capture")
            elif up.startswith("MAIL FROM:"):
                mail_from, rcpts = cmd[10:].strip().split(" ")[0].strip("<>"), []
                send("250 2.1.0 ok")
            elif up.startswith("RCPT TO:"):
                addr = cmd[8:].strip().split(" ")[0].strip("<>")
                if refused():
                    send("451 4.3.0 try again later")
                elif rejected(addr):
                    send("550 5.1.1 no such user")
                else:
                    rcpts.append(addr)
                    send("250 2.1.5 ok")
            elif up == "DATA":
                if not rcpts:
                    send("554 5.5.1 no valid recipients")
                else:
                    in_data, data = True, []
                    send("354 go ahead")
            elif up == "RSET":
                mail_from, rcpts = None, []
                send("250 ok")
            elif up == "NOOP":
                send("250 ok")
            elif up == "QUIT":
                send("221 bye")
                await writer.drain()
                break
            else:
                send("502 5.5.2 not implemented")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    os.makedirs(OUT, exist_ok=True)
    server = await asyncio.start_server(session, "127.0.0.1", PORT, limit=1 << 22)
    port = server.sockets[0].getsockname()[1]
    print(f"relay listening {port}", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
