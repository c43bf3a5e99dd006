// Package deploy tests edgewire's deployment artefacts in deploy/: the
// systemd units and install script are checked with systemd-analyze,
// bash and shellcheck; the Helm chart is rendered with the helm CLI that
// hack/helm/build.sh builds, checked for invariants, compared with the
// plain manifests in deploy/kubernetes, and sent to a real kube-apiserver
// (e2e/kube) with server-side dry-run.
package deploy
