// Pins the Gateway API release whose upstream CRD YAML scripts/testenv installs on the main apiserver (the
// experimental channel) and on the standard-channel apiserver. tools/testcluster pins the older release that
// the third apiserver serves. No code: the module download is the point, checked against go.sum.
module itg.local/gatewayapi

go 1.26.0

require sigs.k8s.io/gateway-api v1.6.3 // indirect
