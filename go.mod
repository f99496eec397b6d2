module github.com/shardledger/shardledger

go 1.26.0

require (
	connectrpc.com/connect v1.21.1
	github.com/cespare/xxhash/v2 v2.3.0
	google.golang.org/protobuf v1.36.12
)
