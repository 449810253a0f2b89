package pki

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestSealRoundTrip(t *testing.T) {
	t.Parallel()
	key, err := NewSealKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		plain []byte
	}{
		{"empty", []byte{}},
		{"ceph key", []byte("AQBzZmVkJXZ0GhAAh0bG9t4w1WkYq8V0r5b0mQ==")},
		{"binary", bytes.Repeat([]byte{0, 1, 2, 255}, 1000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s1, err := Seal(key, tc.plain)
			if err != nil {
				t.Fatal(err)
			}
			s2, _ := Seal(key, tc.plain)
			if s1 == s2 {
				t.Error("sealing twice gives the same string: nonce reused")
			}
			if len(tc.plain) > 8 && strings.Contains(s1, string(tc.plain[:8])) {
				t.Error("sealed value contains the plaintext")
			}
			got, err := Unseal(key, s1)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.plain) {
				t.Errorf("unsealed %q, want %q", got, tc.plain)
			}
		})
	}
}

func TestUnsealTamper(t *testing.T) {
	t.Parallel()
	key, _ := NewSealKey()
	other, _ := NewSealKey()
	sealed, err := Seal(key, []byte("client.admin secret"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(sealed, "v1:"))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) string {
		r := bytes.Clone(raw)
		r[i] ^= 0x01
		return "v1:" + base64.RawURLEncoding.EncodeToString(r)
	}
	cases := []struct {
		name   string
		key    []byte
		sealed string
	}{
		{"wrong key", other, sealed},
		{"truncated", key, sealed[:len(sealed)-4]},
		{"too short", key, "v1:AAAA"},
		{"no prefix", key, strings.TrimPrefix(sealed, "v1:")},
		{"unknown version", key, "v2:" + strings.TrimPrefix(sealed, "v1:")},
		{"bad base64", key, sealed + "!"},
		{"non-canonical base64", key, nonCanonical(t, sealed)},
		{"appended byte", key, "v1:" + base64.RawURLEncoding.EncodeToString(append(bytes.Clone(raw), 0))},
	}
	for i := range raw { // every byte: nonce, ciphertext and tag
		cases = append(cases, struct {
			name   string
			key    []byte
			sealed string
		}{"flip byte", key, flip(i)})
	}
	for _, tc := range cases {
		if got, err := Unseal(tc.key, tc.sealed); !errors.Is(err, ErrUnseal) {
			t.Errorf("%s: Unseal(%q) = %q, %v; want ErrUnseal", tc.name, tc.sealed, got, err)
		}
	}
}

func TestSealBadKey(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := Seal(make([]byte, n), []byte("x")); err == nil {
			t.Errorf("Seal accepted a %d-byte key", n)
		}
		if _, err := Unseal(make([]byte, n), "v1:AAAA"); err == nil {
			t.Errorf("Unseal accepted a %d-byte key", n)
		}
	}
}

func BenchmarkSeal(b *testing.B) {
	key, _ := NewSealKey()
	plain := make([]byte, 64)
	for b.Loop() {
		if _, err := Seal(key, plain); err != nil {
			b.Fatal(err)
		}
	}
}

// nonCanonical flips an unused trailing bit of the base64 text: lenient
// decoders read the same bytes, so only a strict decoder notices.
func nonCanonical(t *testing.T, sealed string) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, sealed[len(sealed)-1])
	out := sealed[:len(sealed)-1] + string(alphabet[last^1])
	a, errA := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(sealed, "v1:"))
	b, errB := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(out, "v1:"))
	if errA != nil || errB != nil || !bytes.Equal(a, b) {
		t.Fatalf("test setup: %q is not a non-canonical twin of %q", out, sealed)
	}
	return out
}
