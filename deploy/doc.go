// Package deploy holds lastgasp's production Kubernetes manifests,
// lastgasp.yaml, and the tests that hold them to the code: every object is
// decoded strictly and created in a real kube-apiserver; the DaemonSet is
// placed by the real DaemonSet controller on collector nodes only; the
// ServiceAccount's RBAC is shown to be enough by running lastgasp's own
// cleanup controller and liveness prober under its token, and to be no
// more by access reviews and refused calls; and the real binary is run
// with exactly the container's capabilities, each of them shown necessary.
//
// The package has no Go code of its own beyond this comment: it exists for
// its tests. README.md says how to deploy.
package deploy
