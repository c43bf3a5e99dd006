// Package lab builds throwaway network topologies in Linux network namespaces
// for edgewire's end-to-end tests: an "internet" bridge with public addresses,
// site routers doing real kernel NAT (endpoint-independent, symmetric, UDP
// blocked, double NAT) and nodes behind them, plus helpers to run processes,
// open sockets and count packets inside those namespaces.
//
// Everything a lab creates lives in namespaces named ewlab-<pid>-<id>-<host>;
// nothing touches the root namespace. A lab is torn down by t.Cleanup on
// success and failure, and New removes leftovers of earlier runs whose test
// process is gone. Tests need root; see Require.
package lab
