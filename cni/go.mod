module vethguard.dev/cni

go 1.19
