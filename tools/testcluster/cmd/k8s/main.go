// Command k8s is a multi-call binary holding upstream kube-apiserver, kube-controller-manager and kubectl,
// plus a `pki` command that writes the certificates a local control plane needs. One binary links the
// shared Kubernetes code once, which roughly halves the build. It dispatches on the name it is called by
// (scripts/testenv makes symlinks) or on its first argument.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/component-base/cli"
	kubectl "k8s.io/kubectl/pkg/cmd"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if name == "k8s" {
		if len(args) == 0 {
			fmt.Fprintln(os.Stderr, "usage: k8s kube-apiserver|kube-controller-manager|kubectl|pki [args...]")
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	os.Args = append([]string{name}, args...)
	switch name {
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kubectl":
		os.Exit(cli.Run(kubectl.NewDefaultKubectlCommand()))
	case "pki":
		if err := writePKI(args); err != nil {
			fmt.Fprintln(os.Stderr, "pki:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "k8s: unknown command %q\n", name)
		os.Exit(2)
	}
}
