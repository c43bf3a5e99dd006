package api

// Where a coordinator keeps its state and serves its admin API by default,
// so the daemon and the CLI (which must not link the daemon) agree.
const (
	DefaultCoordinatorDataDir = "/var/lib/edgewire/coordinator"
	AdminSocketName           = "admin.sock" // in the data dir
)
