package router

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"github.com/lni/dragonboat/v4"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// violations collects field-level problems of a request.
type violations struct {
	v []*errdetails.BadRequest_FieldViolation
}

func (vs *violations) add(field string, err error) {
	if err != nil && len(vs.v) < 100 {
		vs.v = append(vs.v, &errdetails.BadRequest_FieldViolation{Field: field, Description: err.Error()})
	}
}

func (vs *violations) err() error {
	if len(vs.v) == 0 {
		return nil
	}
	ce := connect.NewError(connect.CodeInvalidArgument,
		fmt.Errorf("invalid request: %s: %s (%d problem(s); nothing was applied)", vs.v[0].Field, vs.v[0].Description, len(vs.v)))
	if d, err := connect.NewErrorDetail(&errdetails.BadRequest{FieldViolations: vs.v}); err == nil {
		ce.AddDetail(d)
	}
	return ce
}

func invalid(field string, err error) error {
	var vs violations
	vs.add(field, err)
	return vs.err()
}

// toConnect maps internal and dragonboat errors to Connect codes.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	switch {
	case errors.Is(err, ErrOverloaded), errors.Is(err, dragonboat.ErrPayloadTooBig), errors.Is(err, dragonboat.ErrSystemBusy):
		return connect.NewError(connect.CodeResourceExhausted, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, dragonboat.ErrTimeout):
		return connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf("%w (the outcome is unknown: retry with the same ids)", err))
	case errors.Is(err, context.Canceled), errors.Is(err, dragonboat.ErrCanceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, dragonboat.ErrRejected):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case retryable(err):
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%w (retry with the same ids)", err))
	}
	return connect.NewError(connect.CodeInternal, err)
}
