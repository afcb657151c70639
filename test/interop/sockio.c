//go:build cgo && !nolibfido2

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sockio.h"

#define REPORT_LEN 64

struct sockio {
	int fd;
};

static void *
sockio_open(const char *path)
{
	struct sockaddr_un sa;
	struct sockio *s;

	if (strlen(path) >= sizeof(sa.sun_path))
		return NULL;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return NULL;
	if ((s->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)) < 0) {
		free(s);
		return NULL;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	strcpy(sa.sun_path, path);
	if (connect(s->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(s->fd);
		free(s);
		return NULL;
	}
	return s;
}

static void
sockio_close(void *h)
{
	struct sockio *s = h;

	close(s->fd);
	free(s);
}

/* sockio_read waits up to ms milliseconds (-1: forever) for one report. */
static int
sockio_read(void *h, unsigned char *buf, size_t len, int ms)
{
	struct sockio *s = h;
	struct pollfd pfd = { .fd = s->fd, .events = POLLIN };
	ssize_t n;
	int r;

	do {
		r = poll(&pfd, 1, ms);
	} while (r < 0 && errno == EINTR);
	if (r <= 0)
		return -1;
	if ((n = recv(s->fd, buf, len, 0)) <= 0)
		return -1;
	return (int)n;
}

/* sockio_write gets an output report with its leading report ID (0) and
 * sends the 64 report bytes after it. */
static int
sockio_write(void *h, const unsigned char *buf, size_t len)
{
	struct sockio *s = h;

	if (len != REPORT_LEN + 1 || buf[0] != 0)
		return -1;
	if (send(s->fd, buf + 1, REPORT_LEN, MSG_NOSIGNAL) != REPORT_LEN)
		return -1;
	return (int)len;
}

int
sockio_attach(fido_dev_t *dev)
{
	fido_dev_io_t io = {
		.open = sockio_open,
		.close = sockio_close,
		.read = sockio_read,
		.write = sockio_write,
	};

	return fido_dev_set_io_functions(dev, &io);
}
