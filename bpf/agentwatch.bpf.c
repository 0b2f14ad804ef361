/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one compile unit: BCC compiles this file once at start (about 0.3 s
 * with no kernel headers included). Each concern lives in its own file.
 */
#include "common.h"
#include "socket.h"
#include "gpu.bpf.c"       /* before process.bpf.c, whose fork/exec/exit probes call it */
#include "file.bpf.c"      /* paths written that may matter, module loads; the open probes (GPU's too) */
#include "process.bpf.c"
#include "connect.bpf.c"
#include "sockstate.bpf.c"
#include "payload.bpf.c"
#include "guard.bpf.c"       /* self-protection: signals, ptrace, cgroup moves, bpf() */
#include "cgroup.bpf.c"      /* daemon only (AW_FLEET): sandboxes appearing and going */
