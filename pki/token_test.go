package pki

import (
	"errors"
	"strings"
	"testing"
)

func TestTokenRoundTrip(t *testing.T) {
	t.Parallel()
	fp := mustCA(t, "prod").Fingerprint()
	seen := map[string]bool{}
	for range 20 {
		tok, err := NewToken("prod", fp)
		if err != nil {
			t.Fatal(err)
		}
		s := tok.String()
		if seen[tok.ID] || seen[tok.Secret] {
			t.Fatalf("token id or secret repeated: %s", s)
		}
		seen[tok.ID], seen[tok.Secret] = true, true
		got, err := ParseToken(" " + s + "\n")
		if err != nil {
			t.Fatalf("ParseToken(%q): %v", s, err)
		}
		if got != tok {
			t.Fatalf("round trip %+v != %+v", got, tok)
		}
		if !CheckSecret(tok.Secret, HashSecret(tok.Secret)) {
			t.Fatal("CheckSecret refuses the right secret")
		}
		if CheckSecret(tok.Secret+"x", HashSecret(tok.Secret)) || strings.Contains(HashSecret(tok.Secret), tok.Secret) {
			t.Fatal("hash reveals or accepts a wrong secret")
		}
	}
}

func TestNewTokenErrors(t *testing.T) {
	t.Parallel()
	fp := mustCA(t, "prod").Fingerprint()
	for _, tc := range []struct{ name, cluster, fp string }{
		{"bad cluster", "Prod", fp},
		{"dotted cluster", "a.b", fp},
		{"short fingerprint", "prod", fp[:10]},
		{"upper fingerprint", "prod", strings.ToUpper(fp)},
	} {
		if _, err := NewToken(tc.cluster, tc.fp); err == nil {
			t.Errorf("%s: NewToken accepted", tc.name)
		}
	}
}

func TestParseTokenMalformed(t *testing.T) {
	t.Parallel()
	tok, err := NewToken("prod", mustCA(t, "prod").Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok.String(), ".")
	with := func(i int, v string) string {
		p := append([]string(nil), parts...)
		p[i] = v
		return strings.Join(p, ".")
	}
	for _, tc := range []struct{ name, s string }{
		{"empty", ""},
		{"three parts", strings.Join(parts[:3], ".")},
		{"five parts", tok.String() + ".x"},
		{"bad cluster", with(0, "PROD")},
		{"empty cluster", with(0, "")},
		{"short id", with(1, "abc")},
		{"id not hex", with(1, "zzzzzzzzzzzz")},
		{"short secret", with(2, parts[2][:20])},
		{"secret with padding", with(2, parts[2][:42]+"=")},
		{"fingerprint too short", with(3, parts[3][:63])},
		{"fingerprint not hex", with(3, strings.Repeat("g", 64))},
		{"inner space", strings.Replace(tok.String(), ".", " .", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := ParseToken(tc.s); !errors.Is(err, ErrMalformedToken) {
				t.Fatalf("ParseToken(%q) = %v, want ErrMalformedToken", tc.s, err)
			}
		})
	}
}
