// Package sdnotify tells systemd a Type=notify service is ready (the
// sd_notify protocol: one datagram on $NOTIFY_SOCKET). Without systemd it
// does nothing.
package sdnotify

import (
	"net"
	"os"
)

// Ready sends READY=1 with an optional status line. It reports whether a
// notification was sent.
func Ready(status string) (bool, error) {
	return send("READY=1\nSTATUS=" + status)
}

// Stopping sends STOPPING=1.
func Stopping() (bool, error) { return send("STOPPING=1") }

func send(msg string) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return false, err
	}
	defer c.Close()
	_, err = c.Write([]byte(msg))
	return err == nil, err
}
