package ledger

import (
	"fmt"

	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Limits of the public API. Past a limit the answer is invalid_argument.
const (
	IDLengthMax       = 64
	CurrencyLengthMin = 3
	CurrencyLengthMax = 12
	UserDataBytesMax  = 256
	BatchItemsMax     = 8000
	TimeoutSecondsMax = 365 * 24 * 3600
)

// ValidateID checks an account or transfer id: 1-64 chars of [A-Za-z0-9_.:-].
func ValidateID(id string) error {
	if len(id) == 0 {
		return fmt.Errorf("must not be empty")
	}
	if len(id) > IDLengthMax {
		return fmt.Errorf("must be at most %d characters, got %d", IDLengthMax, len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '_', c == '.', c == ':', c == '-':
		default:
			return fmt.Errorf("character %q at %d is not one of [A-Za-z0-9_.:-]", c, i)
		}
	}
	return nil
}

// ValidateCurrency checks a currency code: 3-12 upper-case letters or digits.
func ValidateCurrency(c string) error {
	if len(c) < CurrencyLengthMin || len(c) > CurrencyLengthMax {
		return fmt.Errorf("must be %d-%d characters, got %d", CurrencyLengthMin, CurrencyLengthMax, len(c))
	}
	for i := 0; i < len(c); i++ {
		if !(c[i] >= 'A' && c[i] <= 'Z' || c[i] >= '0' && c[i] <= '9') {
			return fmt.Errorf("character %q at %d is not an upper-case letter or digit", c[i], i)
		}
	}
	return nil
}

// ValidateUserData checks user data length.
func ValidateUserData(s string) error {
	if len(s) > UserDataBytesMax {
		return fmt.Errorf("must be at most %d bytes, got %d", UserDataBytesMax, len(s))
	}
	return nil
}

// ValidateTransfer checks a transfer's shape (not its accounts or balances): what the
// router rejects with invalid_argument before anything is proposed.
func ValidateTransfer(t *ledgerv1.Transfer) error {
	if err := ValidateID(t.GetId()); err != nil {
		return fmt.Errorf("id: %w", err)
	}
	resolving := t.GetPostPendingId() != "" || t.GetVoidPendingId() != ""
	if t.GetPostPendingId() != "" && t.GetVoidPendingId() != "" {
		return fmt.Errorf("post_pending_id and void_pending_id are mutually exclusive")
	}
	if id := t.GetPostPendingId(); id != "" {
		if err := ValidateID(id); err != nil {
			return fmt.Errorf("post_pending_id: %w", err)
		}
	}
	if id := t.GetVoidPendingId(); id != "" {
		if err := ValidateID(id); err != nil {
			return fmt.Errorf("void_pending_id: %w", err)
		}
	}
	if resolving && t.GetPending() {
		return fmt.Errorf("pending cannot be combined with post_pending_id or void_pending_id")
	}
	if !resolving || t.GetDebitAccountId() != "" || t.GetCreditAccountId() != "" {
		if err := ValidateID(t.GetDebitAccountId()); err != nil {
			return fmt.Errorf("debit_account_id: %w", err)
		}
		if !resolving || t.GetCreditAccountId() != "" {
			if err := ValidateID(t.GetCreditAccountId()); err != nil {
				return fmt.Errorf("credit_account_id: %w", err)
			}
		}
	}
	if !resolving || t.GetCurrency() != "" {
		if err := ValidateCurrency(t.GetCurrency()); err != nil {
			return fmt.Errorf("currency: %w", err)
		}
	}
	if err := ValidateUserData(t.GetUserData()); err != nil {
		return fmt.Errorf("user_data: %w", err)
	}
	if t.GetTimeoutSeconds() > 0 && !t.GetPending() {
		return fmt.Errorf("timeout_seconds is for pending transfers only")
	}
	if t.GetTimeoutSeconds() > TimeoutSecondsMax {
		return fmt.Errorf("timeout_seconds must be at most %d", TimeoutSecondsMax)
	}
	if t.GetCreatedAt() != nil {
		return fmt.Errorf("created_at is set by the ledger and must be empty")
	}
	if t.GetState() != ledgerv1.TransferState_TRANSFER_STATE_UNSPECIFIED {
		return fmt.Errorf("state is set by the ledger and must be empty")
	}
	return nil
}
