package main

// The container image `make image` builds (hack/image) holds the lifeboat binary and nothing
// else: no /etc/ssl/certs, so no CA bundle to verify the registries' TLS certificates with.
// This package embeds the Mozilla root set and hands it to crypto/x509 as fallback roots, which
// Go uses only when the system has none: on a host or in an image with a CA bundle, that bundle
// (or SSL_CERT_FILE / SSL_CERT_DIR) still wins, and a registry's `ca_file` is added to whichever
// pool is in use. The embedded set is as current as the module version in go.mod.
import _ "golang.org/x/crypto/x509roots/fallback"
