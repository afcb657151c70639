/* libfido2 I/O functions over a SOCK_SEQPACKET Unix socket carrying
 * 64-byte CTAPHID reports: the daemon's unix: transport. */
#ifndef TPMFIDO_SOCKIO_H
#define TPMFIDO_SOCKIO_H

#include <fido.h>

/* sockio_attach installs the socket I/O functions on dev; fido_dev_open
 * then takes the socket path as its path argument. */
int sockio_attach(fido_dev_t *dev);

#endif
