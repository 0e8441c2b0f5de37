"""Child-process scripts that hold LMDB resources the way another program would.

Run with `python -c SCRIPT DB_FOLDER`; each prints one line once it holds
what it holds. HOLD_WRITE_LOCK releases the lock when a line arrives on
stdin; HOLD_READ keeps its read transaction until it is killed.
"""

HOLD_WRITE_LOCK = """
import sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=8, subdir=True)
txn = env.begin(write=True)
print("holding", flush=True)
sys.stdin.readline()
txn.abort()
"""

HOLD_READ = """
import sys, time, lmdb
env = lmdb.open(sys.argv[1], max_dbs=8, subdir=True, max_readers=256)
txn = env.begin()
print("reading", flush=True)
time.sleep(600)
"""
