#!/bin/sh
# A scripted stand-in for an AI agent, run by scripts/demo.sh inside a
# network namespace where 198.18.0.1 / fd99::1 is a small fake "internet".
# It runs a few commands and makes a few connections, so agentwatch has
# something to show. POSIX sh; needs /usr/bin/python3.
set -eu

PY=/usr/bin/python3

uname -a
ls /tmp >/dev/null

# Blocking connects (no timeout), so each connect() returns its final result;
# a non-blocking one (socket timeout, curl) returns EINPROGRESS at once.

# TCP to 198.18.0.1:443 and read the listener's greeting.
$PY -c 'import socket as s; c = s.socket(); c.connect(("198.18.0.1", 443)); print(c.recv(64).decode().strip())'

# UDP "connect" to 198.18.0.1:53 (a datagram socket that picks its peer; nothing listens).
$PY -c 'import socket as s; u = s.socket(s.AF_INET, s.SOCK_DGRAM); u.connect(("198.18.0.1", 53)); u.send(b"q")'

# TCP to a closed port: the kernel refuses it (ECONNREFUSED).
$PY -c 'import os, socket as s; print("port 9:", os.strerror(s.socket().connect_ex(("198.18.0.1", 9))))'

# IPv6 TCP to [fd99::1]:8080.
$PY -c 'import socket as s; c = s.socket(s.AF_INET6); c.connect(("fd99::1", 8080)); print(c.recv(64).decode().strip())'

# A detached grandchild (own session, parent gone): still this agent's.
( setsid sh -c 'sleep 0.3; /bin/true detached' & )

exit 0
