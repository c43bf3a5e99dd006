// Package bench is edgewire's benchmark harness (`make bench`): it builds
// the binaries, runs every benchmark in throwaway lab namespaces (see
// e2e/lab) with several repetitions, each next to a reference measured in
// the same run on the same topology, and writes bench/results.md and
// bench/results.json.
//
// The harness lives in test files behind the build tag "bench", so `make
// test` never runs it: benchmarks record numbers and never assert time.
// bench/cmd/wgplain is the plain wireguard-go reference device.
package bench
