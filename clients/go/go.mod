// For module-mode users: require pidmap/clients/go and replace it with a copy
// of this directory. pidmap's own tests build it in GOPATH mode with Debian's
// packages (see docs/clients.md), where this file is ignored.
module pidmap/clients/go

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
