/*
 * A GPU driver simulated at the syscall layer. In a private mount namespace,
 * plain files stand at the device paths; the program opens them and issues
 * real ioctl(2) calls with real NVIDIA, UVM, KFD and DRM numbers and argument
 * layouts. No driver answers (ENOTTY), but the tracepoints see every call.
 *
 * usage: gpu_sim cuda | storm N | fork | plain
 *   cuda   what a CUDA context and an AMD/DRM client do, one call each
 *   storm  N RM_CONTROL ioctls on /dev/nvidiactl
 *   fork   open nvidiactl, dup it, fork: the child ioctls on the inherited fd
 *   plain  the same numbers on a file that is not a GPU device
 *   reuse  a GPU fd closed by close_range(2) (no close(2) for the probes), its number
 *          then opened on a file that is no GPU, read-only, and ioctl'd there
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* nvos.h NVOS64 (RM_ALLOC, 48 bytes) and NVOS54 (RM_CONTROL, 32 bytes) */
struct nvos64 {
	uint32_t hRoot, hObjectParent, hObjectNew, hClass;
	uint64_t pAllocParms, pRightsRequested;
	uint32_t paramsSize, flags, status, pad;
};
struct nvos54 {
	uint32_t hClient, hObject, cmd, flags;
	uint64_t params;
	uint32_t paramsSize, status;
};
struct nv_xfer {
	uint32_t cmd, size;
	uint64_t ptr;
};

#define NV_RM_ALLOC 0xc030462bu       /* _IOWR('F', 0x2b, NVOS64) */
#define NV_RM_CONTROL 0xc020462au     /* _IOWR('F', 0x2a, NVOS54) */
#define NV_XFER 0xc01046d3u           /* _IOWR('F', 0xd3, nv_ioctl_xfer_t) */
#define NV_CHECK_VERSION 0xc04846d2u
#define UVM_INITIALIZE 0x30000001u
#define UVM_REGISTER_CHANNEL 0x1bu
#define KFD_CREATE_QUEUE 0xc0584b02u  /* _IOWR('K', 0x02, 88 bytes) */
#define AMDGPU_CTX 0xc0106442u        /* DRM_IOWR(0x42, union drm_amdgpu_ctx) */
#define AMDGPU_CS 0xc0186444u

static void fake_devices(void)
{
	if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
	    mount("tmpfs", "/dev", "tmpfs", 0, "mode=755")) {
		perror("private /dev");
		exit(2);
	}
	mkdir("/dev/dri", 0755);
	const char *paths[] = {"/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm", "/dev/kfd",
			       "/dev/dri/renderD128", "/dev/notgpu"};
	/* mknod, not open(O_CREAT): creating them must not count as opening a GPU */
	for (unsigned i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
		mknod(paths[i], S_IFREG | 0644, 0);
}

static void rm_alloc(int fd, uint32_t hclass, void *params)
{
	struct nvos64 a = {.hRoot = 1, .hObjectParent = 1, .hObjectNew = 2, .hClass = hclass,
			   .pAllocParms = (uintptr_t)params, .paramsSize = 128};
	ioctl(fd, NV_RM_ALLOC, &a);
}

static void rm_control(int fd, uint32_t cmd)
{
	struct nvos54 c = {.hClient = 1, .hObject = 2, .cmd = cmd};
	ioctl(fd, NV_RM_CONTROL, &c);
}

static void cuda(void)
{
	int ctl = open("/dev/nvidiactl", O_RDWR | O_CLOEXEC);
	int gpu = open("/dev/nvidia0", O_RDWR | O_CLOEXEC);
	int uvm = open("/dev/nvidia-uvm", O_RDWR | O_CLOEXEC);
	char version[72] = {0};
	ioctl(ctl, NV_CHECK_VERSION, version);
	rm_alloc(ctl, 0x0041, NULL);  /* NV01_ROOT_CLIENT */
	rm_alloc(ctl, 0x0080, NULL);  /* NV01_DEVICE_0 */
	uint64_t mem_params[16] = {0};
	mem_params[8] = 1ull << 30;   /* NV_MEMORY_ALLOCATION_PARAMS.size at +64 */
	rm_alloc(ctl, 0x0040, mem_params); /* NV01_MEMORY_LOCAL_USER: cudaMalloc */
	rm_alloc(ctl, 0xA06C, NULL);  /* KEPLER_CHANNEL_GROUP_A */
	rm_alloc(ctl, 0xC86F, NULL);  /* HOPPER_CHANNEL_GPFIFO_A */
	rm_alloc(ctl, 0xCBC0, NULL);  /* HOPPER_COMPUTE_A */
	rm_control(ctl, 0xA06C0101);  /* NVA06C_CTRL_CMD_GPFIFO_SCHEDULE */
	rm_control(ctl, 0xC36F0108);  /* GET_WORK_SUBMIT_TOKEN */
	rm_control(ctl, 0x20800101);  /* a plain query */
	rm_alloc(gpu, 0x0079, NULL);  /* NV01_EVENT_OS_EVENT on the GPU node */
	rm_alloc(ctl, 0x83DE, NULL);  /* GT200_DEBUGGER: CUDA makes one per context, not a debug sign */
	struct nvos64 dbg = {.hClass = 0xB2CC}; /* MAXWELL_PROFILER_DEVICE, wrapped in XFER */
	struct nv_xfer x = {.cmd = 0x2b, .size = sizeof(dbg), .ptr = (uintptr_t)&dbg};
	ioctl(ctl, NV_XFER, &x);
	ioctl(uvm, UVM_INITIALIZE, NULL);
	ioctl(uvm, UVM_REGISTER_CHANNEL, NULL);

	int kfd = open("/dev/kfd", O_RDWR);
	unsigned char queue[88] = {0};
	ioctl(kfd, KFD_CREATE_QUEUE, queue);
	int render = open("/dev/dri/renderD128", O_RDWR);
	uint32_t ctx[4] = {1, 0, 0, 0}; /* AMDGPU_CTX_OP_ALLOC_CTX */
	ioctl(render, AMDGPU_CTX, ctx);
	uint64_t cs[3] = {0};
	ioctl(render, AMDGPU_CS, cs);
	printf("ready %d %d %d %d %d\n", ctl, gpu, uvm, kfd, render);
}

static void storm(long n)
{
	int ctl = open("/dev/nvidiactl", O_RDWR);
	struct nvos54 c = {.cmd = 0x20800101};
	for (long i = 0; i < n; i++)
		ioctl(ctl, NV_RM_CONTROL, &c);
}

static void forked(void)
{
	int ctl = open("/dev/nvidiactl", O_RDWR);
	int copy = dup(ctl);
	int copy2 = fcntl(ctl, F_DUPFD_CLOEXEC, 100);
	rm_control(copy, 0x20800101);
	rm_control(copy2, 0x20800101);
	close(ctl);
	rm_control(ctl, 0x20800101); /* closed: EBADF, and no longer a GPU fd */
	pid_t pid = fork();
	if (pid == 0) {
		rm_alloc(copy, 0xCBC0, NULL); /* the child reaches compute on the inherited fd */
		_exit(0);
	}
	waitpid(pid, NULL, 0);
	printf("fds %d %d %d child %d\n", ctl, copy, copy2, pid);
}

static void plain(void)
{
	int fd = open("/dev/notgpu", O_RDWR);
	rm_alloc(fd, 0xCBC0, NULL);
	rm_alloc(fd, 0xCBC0, NULL);
	ioctl(fd, UVM_REGISTER_CHANNEL, NULL);
}

static void reuse(void)
{
	int ctl = open("/dev/nvidiactl", O_RDWR);
	rm_control(ctl, 0x20800101);
	syscall(SYS_close_range, ctl, ctl, 0);
	int fd = open("/dev/notgpu", O_RDONLY); /* the lowest free number: ctl's */
	rm_control(fd, 0x20800101);
	rm_control(fd, 0x20800101);
	printf("fds %d %d\n", ctl, fd);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	fake_devices();
	if (!strcmp(argv[1], "cuda"))
		cuda();
	else if (!strcmp(argv[1], "storm"))
		storm(argc > 2 ? atol(argv[2]) : 1000000);
	else if (!strcmp(argv[1], "fork"))
		forked();
	else if (!strcmp(argv[1], "plain"))
		plain();
	else if (!strcmp(argv[1], "reuse"))
		reuse();
	else
		return 2;
	fflush(stdout);
	return 0;
}
