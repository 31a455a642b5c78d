// Package wan is a test bed for pqtunnel over an emulated wide-area link:
// two network namespaces, each with a TUN device, joined by a netem.Link
// that runs in the calling process.
//
//	bed, err := wan.New(ctx, "bench")
//	defer bed.Close()
//	bed.Link.SetBoth(netem.Config{Delay: 40 * time.Millisecond, RateBits: 200e6})
//	cmd := bed.B.Command(ctx, "/path/pqtunnel")       // a process inside B
//	conn, err := bed.A.Dial(ctx, "tcp", bed.B.Addr+":8443") // a socket of A
//
// Namespaces are made with 'ip netns add', which keeps them (a bind mount
// under /run/netns) without a process inside and lets 'ip netns exec' start
// processes in them. The TUN devices and the sockets of this process enter a
// namespace by setns(2) on a locked OS thread that is thrown away after: a
// socket or TUN file stays in the namespace it was created in, whichever
// thread uses it later. Every address is inside the two namespaces; nothing
// outside them is touched.
//
// It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), /dev/net/tun and iproute2.
package wan
