"""Writes the seed inputs of the stateful targets: `python3 seeds.py corpus` (from fuzz/).

Each seed is spelled byte for byte the way the target reads it through
`arbitrary::Unstructured` (a choice among fewer than 256 values takes one byte,
modulo the range; `ratio(n, d)` is true when 1 + byte % d <= n; a bool is the
low bit). If a target's `op` changes, rerun this and check the seeds with
`SHOAL_FUZZ_TRACE=1 cargo +nightly fuzz run <target> corpus/<target>/seed-*`.
"""
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus"

def b(*xs): return bytes(xs)

# ---- tracker_ops ----
NAMES = "abcdefghijk"
def t_op(session, code, *rest): return b(session, code) + b"".join(rest)
def t_connect(s, ip=0): return t_op(s, 0, b(ip))
def t_disconnect(s): return t_op(s, 3)
def t_name(n): return b(0, NAMES.index(n))          # ratio(7,8) true, then index
def t_send(s, msg): return t_op(s, 4, msg)
def hello(n, secret=0): return b(0) + t_name(n) + b(1, secret)   # port 4000, secret [secret; 32]
def have(f, root=0, pieces=1, complete=1): return b(2) + t_name(f) + b(0, root) + b(0, pieces) + b(complete)
def need(f): return b(4) + t_name(f)
def unneed(f): return b(5) + t_name(f)
def drop(f, root=0): return b(6) + t_name(f) + b(0, root)
def exit_(): return b(7, 1)
def synced(): return b(7, 0)
def advance_ms(ms): return t_op(0, 12, b(0, ms >> 8, ms & 0xff))   # int_in_range(0..=10000), 2 bytes BE
def wake(): return t_op(0, 14)
def congest(s): return t_op(s, 16)
def drain(s): return t_op(s, 17)

seeds = {}
# Nodes fill the file table, a watcher is told of changes, one exits, the rest vanish.
s = b""
nodes = ["a", "b", "c"]
for k, node in enumerate(nodes):
    s += t_connect(k, k % 3) + t_send(k, hello(node))
files = "defghijk"
for i, f in enumerate(files):
    s += t_send(i // 4, have(f, root=i % 4))
s += t_send(2, have("a"))                       # a ninth file: the table is full
s += t_connect(3, 1) + t_send(3, hello("k")) + t_send(3, need("d"))
for k in range(5):                               # more owners of d than the limit
    s += t_connect(4 + k, 2) + t_send(4 + k, hello(NAMES[k + 4])) + t_send(4 + k, have("d", root=k % 4))
s += advance_ms(150)
s += t_send(0, drop("d")) + t_send(1, exit_()) + advance_ms(150)
s += t_disconnect(0) + advance_ms(1000) + t_connect(0) + t_send(0, hello("a"))   # a returns in time
s += t_disconnect(2) + advance_ms(2500) + wake()
seeds["tracker_ops/seed-tables"] = s
# Protocol mistakes: before hello, twice hello, a name already connected, a peer message, watching limits.
s = t_connect(0) + t_send(0, need("a")) + t_connect(1) + t_send(1, hello("a")) + t_send(1, hello("b"))
s += t_connect(2) + t_send(2, hello("a", secret=1)) + t_send(2, b(10, 0, 0, 1, 0, 0, 0))     # HavePiece
for f in "bcdef":
    s += t_send(1, need(f))
s += t_send(1, unneed("b")) + advance_ms(3000)
seeds["tracker_ops/seed-mistakes"] = s
# A watcher backs up while an owner flips a flag; it drains and gets the latest list once.
s = t_connect(0) + t_send(0, hello("a")) + t_connect(1, 1) + t_send(1, hello("b")) + t_send(1, need("f"))
s += congest(1) + t_send(1, need("g"))
for k in range(6):
    s += t_send(0, have("f", complete=k % 2)) + advance_ms(150)
s += drain(1) + advance_ms(150)
seeds["tracker_ops/seed-backpressure"] = s
# A node restarts with one file changed and says Synced; a stranger tries its name; fake roots.
s = t_connect(0) + t_send(0, hello("a")) + t_send(0, have("d", root=0)) + t_send(0, have("e", root=1))
s += t_disconnect(0) + t_connect(1, 1) + t_send(1, hello("a", secret=1))
s += t_connect(2, 2) + t_send(2, hello("a")) + t_send(2, have("d", root=2)) + t_send(2, synced())
for r in range(4):
    s += t_send(2, have("f", root=r))
s += t_connect(3) + advance_ms(3500)
seeds["tracker_ops/seed-names"] = s

# ---- download_ops ----
def setup(pieces, last_len, owners=2, holds=None, claim=None, max_peers=4, small_steps=0, big=False, first=None, pin=0):
    d = b(0 if big else 1)                                # ratio(1,16): 0 → big
    d += b(pieces - 1 if big else pieces)
    off = last_len - 1
    d += off.to_bytes(3, "big") if big else off.to_bytes(2, "big")
    # Content seed; its top byte picks the pin (0: none, 1: the real root's first 8 + pin//8 digits, 3: another root).
    d += ((pin << 56) | (0x1234567 + pieces)).to_bytes(8, "little")
    d += b(owners - 1)
    for i in range(owners):
        d += b(1) if holds is None or holds[i] is None else b(3, holds[i])
    d += b(1) if claim is None else b(0, claim[0], claim[1])
    d += b(max_peers - 1, small_steps)
    first = first if first is not None else [(i, 0, 1) for i in range(owners)]
    d += b(len(first)) + b"".join(b(o, v, c) for o, v, c in first)
    return d
def on(pick, *event): return b(4, pick) + b(*event)
CONNECTED, CLOSED, HONEST = 0, 2, 3
def serve(n, corrupt=None): return b(9) + b(n - 1) + (b(1) if corrupt is None else b(3, corrupt))
def reply_hashes(tamper=None): return b(7) + (b(0) if tamper is None else b(1, 0, 0, tamper))
def d_advance(ms): return b(1, 0, ms >> 8, ms & 0xff)
d_wake = b(3, 2)

s = setup(8, 5000) + on(0, CONNECTED) + on(1, CONNECTED)
s += on(0, HONEST) + on(1, HONEST) + (on(0, HONEST) + on(1, HONEST)) * 3
seeds["download_ops/seed-honest"] = s
s = setup(2, 0x100000 + 0x4000, owners=1, big=True) + on(0, CONNECTED) + on(0, HONEST) * 4
seeds["download_ops/seed-two-blocks"] = s
s = setup(4, 0x4000, owners=1, claim=(0b0111, 0b0100), small_steps=1) + on(0, CONNECTED) + on(0, HONEST) * 3
seeds["download_ops/seed-resume"] = s
# Owner 0 tampers with hashes and is banned; owner 2 sends a spoiled endgame copy and is banned; owner 1 serves.
answer_own = (6, 0, 0, 1)
s = setup(6, 100, owners=3) + on(0, CONNECTED) + on(1, CONNECTED) + on(2, CONNECTED)
s += on(0, *answer_own) + on(0, 7) + b(1, 0, 0, 0x40)
s += on(0, HONEST) + d_advance(400) + on(1, *answer_own) + on(1, 9, 7, 3, 0xff) + on(0, HONEST) * 3
seeds["download_ops/seed-liars"] = s
# Owners that connect and never answer, until the download gives up.
s = setup(3, 777, owners=2, first=[(0, 0, 1), (1, 0, 0)]) + on(0, CONNECTED) + d_advance(10000) * 8 + d_wake
seeds["download_ops/seed-silent"] = s
# Pinned to the real root (16 digits): as honest; pinned to a root nobody lists: a clear failure.
s = setup(4, 3000, pin=1 + 8 * 8) + on(0, CONNECTED) + on(1, CONNECTED) + (on(0, HONEST) + on(1, HONEST)) * 4
seeds["download_ops/seed-pinned"] = s
s = setup(4, 3000, pin=3) + d_advance(4000) + d_wake
seeds["download_ops/seed-pinned-away"] = s

for name, data in seeds.items():
    path = os.path.join(out, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(data)
    print(name, len(data))
