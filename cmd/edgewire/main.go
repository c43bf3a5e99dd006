// Command edgewire is the operator's CLI: the local agent's status, and
// join tokens and nodes on the coordinator. The commands live in package
// cli.
package main

import (
	"os"

	"github.com/edgewire/edgewire/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
