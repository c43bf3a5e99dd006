// Command wgplain is the benchmark reference for edgewire's data plane:
// the wireguard-go library's own device over a TUN interface with the
// standard UDP bind and a UAPI socket, and nothing else (no agent, no ICE,
// no relay). The harness configures it with stock `wg setconf`, so a
// throughput ratio against it isolates what edgewire adds on top of
// wireguard-go.
//
// Usage: wgplain IFACE [MTU]. It runs in the foreground until SIGTERM or
// SIGINT and removes its interface and socket on exit.
package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wgplain:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 1 || len(args) > 2 {
		return fmt.Errorf("usage: wgplain IFACE [MTU]")
	}
	name, mtu := args[0], device.DefaultMTU
	if len(args) == 2 {
		var err error
		if mtu, err = strconv.Atoi(args[1]); err != nil || mtu < 576 || mtu > 65535 {
			return fmt.Errorf("mtu %q: want 576-65535", args[1])
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return fmt.Errorf("create tun %s: %w", name, err)
	}
	if real, err := dev.Name(); err == nil {
		name = real
	}
	wg := device.NewDevice(dev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, "("+name+") "))
	defer wg.Close()

	f, err := ipc.UAPIOpen(name)
	if err != nil {
		return fmt.Errorf("uapi open %s: %w", name, err)
	}
	ln, err := ipc.UAPIListen(name, f)
	if err != nil {
		return fmt.Errorf("uapi listen %s: %w", name, err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // listener closed
			}
			go wg.IpcHandle(c)
		}
	}()
	log.Info("wireguard-go device up", "iface", name, "mtu", mtu)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		log.Info("stopping", "signal", s.String())
	case <-wg.Wait():
		log.Info("device closed")
	}
	return nil
}
