package router

import (
	"net/http"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	"github.com/shardledger/shardledger/internal/wire"
	"github.com/shardledger/shardledger/proto/gen/ledger/v1/ledgerv1connect"
)

// MessageBytesMax bounds a request message; above it the answer is resource_exhausted.
const MessageBytesMax = 8 << 20

// CompressMinBytes: smaller responses are sent uncompressed.
const CompressMinBytes = 8 << 10

// Handler serves LedgerService, AdminService, gRPC health and reflection on one mux
// (Connect, gRPC and gRPC-Web).
func (r *Router) Handler(extra ...connect.HandlerOption) http.Handler {
	opts := append([]connect.HandlerOption{
		connect.WithReadMaxBytes(MessageBytesMax),
		// Compressing small answers costs more CPU than it saves on the wire.
		connect.WithCompressMinBytes(CompressMinBytes),
		// Answers are encoded by the generated code; requests are still decoded (and
		// their strings checked) by protobuf's decoder.
		connect.WithCodec(wire.Codec{}),
	}, extra...)
	mux := http.NewServeMux()
	mux.Handle(ledgerv1connect.NewLedgerServiceHandler(r, opts...))
	mux.Handle(ledgerv1connect.NewAdminServiceHandler(r.Admin(), opts...))
	mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker(
		ledgerv1connect.LedgerServiceName, ledgerv1connect.AdminServiceName)))
	reflector := grpcreflect.NewStaticReflector(ledgerv1connect.LedgerServiceName, ledgerv1connect.AdminServiceName)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	return mux
}

// Server returns an HTTP server for the handler speaking HTTP/1.1 and cleartext HTTP/2.
func Server(addr string, h http.Handler) *http.Server {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{Addr: addr, Handler: h, Protocols: p, ReadHeaderTimeout: 10e9}
}
