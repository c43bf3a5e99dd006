// Package layering has no code: its test keeps the package graph in
// layers. The agent (node/) and the coordinator (coordinator/) share only
// leaves (api, types/..., internal/...), never each other, and the CLI and
// the agent link neither the coordinator's server nor its store.
package layering
