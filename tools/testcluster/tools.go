//go:build tools

// Keeps sigs.k8s.io/gateway-api in go.mod and go.sum: scripts/testenv installs the upstream CRD YAML from
// this module's download, never CRDs generated from code.
package testcluster

import _ "sigs.k8s.io/gateway-api/apis/v1"
