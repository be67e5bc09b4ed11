"""A capture relay for end-to-end tests: a real SMTP server on a socket, written with asyncio.

It splits lines on LF alone, as the relays vulnerable to SMTP smuggling do (SECURITY.md
SM-05): if Plenary ever sent a bare "<LF>.<LF>", this relay would end DATA there and read
what follows as commands, and the test would see an extra transaction.

Every accepted transaction is appended to OUT/messages.jsonl as
{"mail_from", "rcpts", "data" (latin-1 text), "tls" (bool), "auth" (user or null),
"conn" (the number of the connection it came on, from 1), "t" (unix time, float),
"pipelined" (bool: the next command had already arrived when MAIL was read, i.e. the
client sent MAIL, RCPT and DATA without waiting for the replies, RFC 2920),
"then_more" (bool: bytes after the end-of-data "." had already arrived when it was read,
i.e. the client sent the next command with the message, RFC 2920 section 3.1)}.
A MAIL inside an open transaction gets 503, as Postfix answers it ("nested MAIL
command"): a client must RSET after a refused transaction before the next one.
Control files in OUT change behaviour live:
  OUT/refuse   exists -> every RCPT gets 451 4.3.0 (temporary)
  OUT/reject   lines of addresses that get 550 5.1.1 at RCPT (permanent)
  OUT/defer    lines of addresses that get 451 4.2.0 at RCPT (temporary)
Every RCPT attempt is appended to OUT/rcpts.log as "CODE ADDRESS".

Options after OUT [PORT]:
  --starttls CERT KEY   offer STARTTLS and refuse MAIL before it (530)
  --tls CERT KEY        implicit TLS (RFC 8314): the handshake comes before the greeting
  --auth USER:PASS      require AUTH PLAIN or LOGIN before MAIL (530), only over TLS
  --no-pipelining       do not offer PIPELINING (it is offered by default)
Prints "relay listening PORT" once ready.
"""
import asyncio, base64, itertools, json, os, ssl, sys, time

OUT = sys.argv[1]
rest = sys.argv[2:]
PORT = int(rest.pop(0)) if rest and not rest[0].startswith("--") else 0
STARTTLS = IMPLICIT = AUTH = None
PIPELINING = True
while rest:
    opt = rest.pop(0)
    if opt in ("--starttls", "--tls"):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(rest.pop(0), rest.pop(0))
        if opt == "--starttls":
            STARTTLS = ctx
        else:
            IMPLICIT = ctx
    elif opt == "--auth":
        AUTH = rest.pop(0)
    elif opt == "--no-pipelining":
        PIPELINING = False
    else:
        sys.exit(f"relay.py: unknown option {opt}")
LOG = os.path.join(OUT, "messages.jsonl")
CONNS = itertools.count(1)


def refused():
    return os.path.exists(os.path.join(OUT, "refuse"))


def listed(name, addr):
    p = os.path.join(OUT, name)
    if not os.path.exists(p):
        return False
    with open(p) as f:
        return addr.lower() in {l.strip().lower() for l in f}


def log_rcpt(code, addr):
    with open(os.path.join(OUT, "rcpts.log"), "a") as f:
        f.write(f"{code} {addr}\n")


def check_plain(b64):
    try:
        parts = base64.b64decode(b64).split(b"\0")
    except ValueError:
        return None
    if len(parts) != 3:
        return None
    user, pw = parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
    return user if f"{user}:{pw}" == AUTH else None


async def session(reader, writer):
    def send(line):
        writer.write((line + "\r\n").encode())

    conn = next(CONNS)
    send("220 capture ESMTP")
    mail_from, rcpts, data, in_data = None, [], [], False
    pipelined = False
    tls, user = IMPLICIT is not None, None
    try:
        while True:
            raw = await reader.readline()  # LF-terminated, like a lenient relay
            if not raw:
                break
            line = raw.decode("latin-1")
            if in_data:
                text = line.rstrip("\n").rstrip("\r")
                if text == ".":
                    then_more = len(reader._buffer) > 0
                    with open(LOG, "a") as f:
                        f.write(json.dumps({"mail_from": mail_from, "rcpts": rcpts, "data": "".join(data),
                                            "tls": tls, "auth": user, "conn": conn,
                                            "t": time.time(), "pipelined": pipelined,
                                            "then_more": then_more}) + "\n")
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
                if STARTTLS is not None and not tls:
                    send("250-STARTTLS")
                if AUTH is not None and tls:
                    send("250-AUTH PLAIN LOGIN")
                if PIPELINING:
                    send("250-PIPELINING")
                send("250-8BITMIME")
                send("250 SIZE 104857600")
            elif up.startswith("HELO"):
                send("250 capture")
            elif up == "STARTTLS" and STARTTLS is not None and not tls:
                send("220 2.0.0 ready to start TLS")
                await writer.drain()
                await writer.start_tls(STARTTLS)
                tls, mail_from, rcpts = True, None, []
                continue
            elif up.startswith("AUTH") and AUTH is not None and tls and user is None:
                words = cmd.split()
                mech = words[1].upper() if len(words) > 1 else ""
                if mech == "PLAIN":
                    if len(words) > 2:
                        answer = words[2]
                    else:
                        send("334 ")
                        await writer.drain()
                        answer = (await reader.readline()).decode("latin-1").strip()
                    user = check_plain(answer)
                elif mech == "LOGIN":
                    send("334 VXNlcm5hbWU6")
                    await writer.drain()
                    u = base64.b64decode((await reader.readline()).strip()).decode("utf-8", "replace")
                    send("334 UGFzc3dvcmQ6")
                    await writer.drain()
                    p = base64.b64decode((await reader.readline()).strip()).decode("utf-8", "replace")
                    user = u if f"{u}:{p}" == AUTH else None
                send("235 2.7.0 authenticated" if user else "535 5.7.8 bad credentials")
            elif up.startswith("MAIL FROM:") and STARTTLS is not None and not tls:
                send("530 5.7.0 must issue a STARTTLS command first")
            elif up.startswith("MAIL FROM:") and AUTH is not None and user is None:
                send("530 5.7.0 authentication required")
            elif up.startswith("MAIL FROM:") and mail_from is not None:
                send("503 5.5.1 Error: nested MAIL command")
            elif up.startswith("MAIL FROM:"):
                mail_from, rcpts = cmd[10:].strip().split(" ")[0].strip("<>"), []
                # Bytes after the MAIL line already read from the socket: the client did
                # not wait for this reply. (asyncio's StreamReader keeps them in _buffer.)
                pipelined = len(reader._buffer) > 0
                send("250 2.1.0 ok")
            elif up.startswith("RCPT TO:"):
                addr = cmd[8:].strip().split(" ")[0].strip("<>")
                if refused():
                    log_rcpt(451, addr)
                    send("451 4.3.0 try again later")
                elif listed("reject", addr):
                    log_rcpt(550, addr)
                    send("550 5.1.1 no such user")
                elif listed("defer", addr):
                    log_rcpt(451, addr)
                    send("451 4.2.0 mailbox busy, try later")
                else:
                    log_rcpt(250, addr)
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
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main():
    os.makedirs(OUT, exist_ok=True)
    server = await asyncio.start_server(session, "127.0.0.1", PORT, limit=1 << 22, ssl=IMPLICIT)
    port = server.sockets[0].getsockname()[1]
    print(f"relay listening {port}", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
