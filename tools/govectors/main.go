// Command govectors writes test vectors of Go standard-library behaviour that the Python
// decoders must reproduce: encoding/json struct decoding (case-insensitive key matching,
// duplicate keys, lone surrogates, invalid UTF-8, number forms, nesting), time.Time's JSON
// and RFC 3339 parsing, and the rune folding used for key matching.
//
// It uses the standard library only and declares its own structs with the field names and
// types of the records the Go routers exchange. Run it with `make vectors`; the Python test
// suite reads the JSON it writes and never needs Go.
//
//	go run ./tools/govectors -out tests/vectors
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ---- the records, as the Go routers declare them (field names and types) ----

type nodeData struct {
	Name          string
	ID            string
	TunnelAddress string
	ServiceID     string
	LastSeen      time.Time
	AvailableVRAM uint64
	Models        []string
}

type observeEvent struct {
	Model   string   `json:"model"`
	Chain   []uint64 `json:"chain"`
	NodeID  string   `json:"node_id"`
	Replica int      `json:"replica"`
}

type invalidateEvent struct {
	Model   string `json:"model"`
	NodeID  string `json:"node_id"`
	Replica int    `json:"replica"`
}

type chatToolFunction struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

type chatToolCall struct {
	Index    int              `json:"index"`
	ID       string           `json:"id"`
	Type     string           `json:"type"`
	Function chatToolFunction `json:"function"`
}

type chatMessage struct {
	Role         string         `json:"role,omitempty"`
	Name         string         `json:"name,omitempty"`
	Content      any            `json:"content"`
	FunctionCall any            `json:"function_call,omitempty"`
	ToolCalls    []chatToolCall `json:"tool_calls,omitempty"`
	ToolCallID   string         `json:"tool_call_id,omitempty"`
	Reasoning    *string        `json:"reasoning,omitempty"`
}

// UnmarshalJSON also accepts "reasoning_content" (an alias the routers read), which makes
// every message decode go through a method: a type error anywhere in a message fails the
// whole request.
func (m *chatMessage) UnmarshalJSON(data []byte) error {
	type fields chatMessage
	aux := struct {
		*fields
		ReasoningContent *string `json:"reasoning_content,omitempty"`
	}{fields: (*fields)(m)}
	if err := json.Unmarshal(data, &aux); err != nil {
		return err
	}
	if m.Reasoning == nil && aux.ReasoningContent != nil {
		m.Reasoning = aux.ReasoningContent
	}
	return nil
}

type chatURL struct {
	URL string `json:"url"`
}

type chatAudio struct {
	Format string `json:"format"`
	Data   string `json:"data"`
}

type chatPart struct {
	Type       string    `json:"type"`
	Text       string    `json:"text"`
	ImageURL   chatURL   `json:"image_url"`
	AudioURL   chatURL   `json:"audio_url"`
	VideoURL   chatURL   `json:"video_url"`
	InputAudio chatAudio `json:"input_audio"`
}

type chatRequest struct {
	Model    string        `json:"model"`
	Messages []chatMessage `json:"messages,omitempty"`
}

// prefixSource decodes a chat request body as an HTTP framework does (json.Decoder.Decode:
// the first value, trailing bytes ignored) and joins role and text per message. A list of
// content parts is re-encoded and decoded into parts, ignoring errors, and the text of the
// parts typed "text" is concatenated.
func prefixSource(body []byte) (string, bool) {
	var req chatRequest
	if len(body) > 0 {
		if err := json.NewDecoder(bytes.NewReader(body)).Decode(&req); err != nil {
			return "", false
		}
	}
	var b strings.Builder
	for _, m := range req.Messages {
		b.WriteString(m.Role)
		b.WriteByte('\n')
		text := ""
		switch c := m.Content.(type) {
		case string:
			text = c
		case []any:
			raw, _ := json.Marshal(c)
			var parts []chatPart
			_ = json.Unmarshal(raw, &parts)
			for _, p := range parts {
				if p.Type == "text" {
					text += p.Text
				}
			}
		}
		b.WriteString(text)
		b.WriteByte('\n')
	}
	return b.String(), true
}

// ---- output ----

type vectorFile struct {
	Generator string `json:"generator"`
	Go        string `json:"go"`
	Note      string `json:"note"`
	Cases     []any  `json:"cases"`
}

// input records a document as text when it is valid UTF-8, else as base64.
func input(doc []byte) map[string]any {
	if utf8.Valid(doc) {
		return map[string]any{"text": string(doc)}
	}
	return map[string]any{"b64": base64.StdEncoding.EncodeToString(doc)}
}

func timeJSON(t time.Time) map[string]any {
	return map[string]any{"zero": t.IsZero(), "sec": t.Unix(), "nsec": t.Nanosecond()}
}

func write(dir, name, note string, cases []any) {
	f := vectorFile{Generator: "tools/govectors", Go: runtime.Version(), Note: note, Cases: cases}
	var buf bytes.Buffer
	head, err := json.Marshal(map[string]any{"generator": f.Generator, "go": f.Go, "note": f.Note})
	if err != nil {
		panic(err)
	}
	buf.Write(head[:len(head)-1])
	buf.WriteString(",\"cases\":[\n")
	for i, c := range f.Cases {
		line, err := json.Marshal(c)
		if err != nil {
			panic(err)
		}
		buf.Write(line)
		if i < len(f.Cases)-1 {
			buf.WriteByte(',')
		}
		buf.WriteByte('\n')
	}
	buf.WriteString("]}")
	data := buf.Bytes()
	if err := os.WriteFile(filepath.Join(dir, name), append(data, '\n'), 0o644); err != nil {
		panic(err)
	}
}

// ---- document generation ----

type gen struct{ r *rand.Rand }

func (g gen) pick(xs []string) string { return xs[g.r.IntN(len(xs))] }

var stringLits = []string{
	`"x"`, `""`, `"gpu-a"`, `"\ud800"`, `"a\udc00b"`, `"\ud83d\ude00"`, `"\ude00\ud83d"`,
	`"\ud800\ud800\udc00"`, `"\uD800x"`, `"\\ud800"`, `"\\\ud800"`, "\"\xff\"", "\"a\xed\xa0\x80b\"",
	"\"\xe2\x82(\"", `"<&>\u2028"`, `"ſ"`, `"\u0000"`, `"\u017f\u212a"`, `"\/\"\\\b\f\n\r\t"`,
	"\"\xc0\x80\"", "\"\xf4\x90\x80\x80\"", `"\udbff\udfff"`, `"llama-3"`,
}

var uintLits = []string{"0", "1", "18446744073709551615", "12345678901234567890", "7", "42"}

var badUintLits = []string{
	"-0", "1.0", "1e3", "1E2", "0.0", "-0.0", "18446744073709551616", "-1", "99999999999999999999",
	"5e-1", "1.5", strings.Repeat("9", 400), "0e0",
}

var intLits = []string{"0", "-0", "-1", "9223372036854775807", "-9223372036854775808", "3", "2"}

var badIntLits = []string{"1.0", "9223372036854775808", "-9223372036854775809", "1e0", "-0.0"}

var otherLits = []string{"null", "true", "false", "[]", "{}", `{"a":1}`, `[1,"x"]`, "1e400", "-1e400", "1e-400"}

// goodTimeLits are RFC 3339 instants in years 1..9999 UTC (Go's zero time included).
var goodTimeLits = []string{
	`"2026-01-01T00:00:00Z"`, `"2026-01-01T00:00:00.123456789Z"`, `"2026-01-01T00:00:00.1234567891Z"`,
	`"0001-01-01T00:00:00Z"`, `"2026-01-01T00:00:00+05:30"`, `"1970-01-01T00:00:00Z"`,
	`"2026-01-01T00:00:00.5+01:00"`, `"2026-01-01T00:00:00\u005a"`, `"2026-01-01T00:00:00-00:00"`,
}

var timeLits = []string{
	`"2026-01-01T00:00:00Z"`, `"2026-01-01T00:00:00.123456789Z"`, `"2026-01-01T00:00:00.1234567891Z"`,
	`"0001-01-01T00:00:00Z"`, `"0001-01-01T00:00:00+01:00"`, `"0000-01-01T00:00:00Z"`, `"9999-12-31T23:59:59Z"`,
	`"9999-12-31T23:59:59-01:00"`, `"2026-01-01T00:00:00,5Z"`, `"2026-01-01T00:00:00+24:00"`,
	`"2026-01-01T00:00:00+23:60"`, `"2026-01-01T1:00:00Z"`, `"2026-01-01t00:00:00Z"`, `"2026-01-01T00:00:00z"`,
	`"２０２６-01-01T00:00:00Z"`, `"2026-02-29T00:00:00Z"`, `"2024-02-29T00:00:00Z"`, `"2026-01-01T00:00:60Z"`,
	`"2026-01-01T00:00:00\u005a"`, `"2026-01-01T00:00:00.Z"`, `"+999-01-01T00:00:00Z"`,
	`"2026-01-01T00:00:00+05:30"`, `"2026-01-01 00:00:00Z"`, `"2026-01-01T00:00:00"`, `"2026-1-01T00:00:00Z"`,
	`"2026-01-01T24:00:00Z"`, `"1970-01-01T00:00:00Z"`, `"2026-01-01T00:00:00-00:00"`, `"2026-01-01T00:00:00.5+01:00"`,
	`"2026-01-01T00:00:00Z "`, `" 2026-01-01T00:00:00Z"`,
}

// keyVariant spells a field name as a client might: exact, other cases, Unicode letters that
// fold to ASCII ones (ſ to s, the Kelvin sign to k), dotted/dotless i (no simple fold to i),
// escapes, and near misses.
func (g gen) keyVariant(name string) string {
	switch g.r.IntN(12) {
	case 0, 1, 2:
		return name
	case 3:
		return strings.ToLower(name)
	case 4:
		return strings.ToUpper(name)
	case 5:
		var b strings.Builder
		for _, c := range name {
			if g.r.IntN(2) == 0 {
				b.WriteRune(unicode.ToUpper(c))
			} else {
				b.WriteRune(unicode.ToLower(c))
			}
		}
		return b.String()
	case 6:
		s := strings.ReplaceAll(strings.ReplaceAll(name, "s", "ſ"), "S", "ſ")
		return strings.ReplaceAll(strings.ReplaceAll(s, "k", "\u212a"), "K", "\u212a")
	case 7:
		s := strings.ReplaceAll(strings.ReplaceAll(name, "i", "ı"), "I", "İ")
		return strings.ReplaceAll(s, "d", "D")
	case 8:
		return strings.ReplaceAll(strings.ReplaceAll(name, "_", ""), "-", "")
	case 9:
		return name + " "
	case 10:
		if name == "" {
			return name
		}
		return fmt.Sprintf(`\u%04x`, name[0]) + name[1:]
	default:
		return strings.ReplaceAll(name, "_", "-")
	}
}

func (g gen) member(name, value string) string {
	return `"` + g.keyVariant(name) + `":` + value
}

func (g gen) anyValue(depth int) string {
	switch g.r.IntN(8) {
	case 0:
		return g.pick(stringLits)
	case 1:
		return g.pick(append(badUintLits, uintLits...))
	case 2:
		return g.pick(otherLits)
	case 3:
		if depth < 3 {
			return "[" + g.anyValue(depth+1) + "," + g.anyValue(depth+1) + "]"
		}
		return "[]"
	case 4:
		if depth < 3 {
			return `{"k":` + g.anyValue(depth+1) + `,"K":` + g.anyValue(depth+1) + "}"
		}
		return "{}"
	default:
		return g.pick(intLits)
	}
}

func (g gen) frame(body string) []byte {
	prefix, suffix := "", ""
	switch g.r.IntN(30) {
	case 0:
		prefix = "\xef\xbb\xbf"
	case 1:
		prefix = " \n\t"
	case 2:
		suffix = " \r\n"
	case 3:
		suffix = " x"
	case 4:
		suffix = "{}"
	}
	return []byte(prefix + body + suffix)
}

func (g gen) object(members []string) string {
	g.r.Shuffle(len(members), func(i, j int) { members[i], members[j] = members[j], members[i] })
	return "{" + strings.Join(members, ",") + "}"
}

func (g gen) arrayOf(lits []string, extra []string) string {
	n := g.r.IntN(4)
	items := make([]string, n)
	for i := range items {
		if g.r.IntN(5) == 0 {
			items[i] = g.pick(extra)
		} else {
			items[i] = g.pick(lits)
		}
	}
	return "[" + strings.Join(items, ",") + "]"
}

func (g gen) fieldValue(kind string) string {
	bad := g.r.IntN(10) == 0
	if g.r.IntN(20) == 0 {
		return g.pick(otherLits)
	}
	switch kind {
	case "string":
		return g.pick(stringLits)
	case "uint":
		if bad {
			return g.pick(badUintLits)
		}
		return g.pick(uintLits)
	case "int":
		if bad {
			return g.pick(badIntLits)
		}
		return g.pick(intLits)
	case "time":
		if bad {
			return g.pick(timeLits)
		}
		return g.pick(goodTimeLits)
	case "strings":
		if bad {
			return g.arrayOf(stringLits, []string{"null", "1", "true"})
		}
		return g.arrayOf(stringLits, []string{"null"})
	case "uints":
		if bad {
			return g.arrayOf(uintLits, append([]string{"null", `"1"`, "true"}, badUintLits...))
		}
		return g.arrayOf(uintLits, []string{"null"})
	}
	return g.anyValue(0)
}

type field struct{ name, kind string }

func (g gen) doc(fields []field) []byte {
	var members []string
	for _, f := range fields {
		for n := g.r.IntN(3); n > 0; n-- {
			members = append(members, g.member(f.name, g.fieldValue(f.kind)))
		}
		if g.r.IntN(6) == 0 {
			members = append(members, g.member(f.name, g.fieldValue(f.kind)))
		}
	}
	if g.r.IntN(3) == 0 {
		members = append(members, `"unknown":`+g.anyValue(0))
	}
	return g.frame(g.object(members))
}

var fixedDocs = []string{
	"", "null", "[]", `"s"`, "5", "{", "{}", "[" + strings.Repeat("[", 4999), strings.Repeat("[", 5000),
	`{"u":` + strings.Repeat("[", 2000) + strings.Repeat("]", 2000) + `}`,
	`{"u":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}`,
	`{"u":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`,
	`{"u":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
	`{"u":NaN}`, `{"u":Infinity}`, `{"u":01}`, `{"u":.5}`, `{"u":1.}`, `{"u":+1}`, "{\"u\":\"\x01\"}",
	`{"u":"\x"}`, `{"u":1}garbage`, `{"u":"` + strings.Repeat("9", 5000) + `"}`,
	`{"u":` + strings.Repeat("9", 5000) + `}`, `{"u":1e99999}`, `{,}`, `{"a":1,}`, `[1,]`,
	"nullx", "null x", "null]", `{"messages":[]}x`, `{"messages":[{"role":"u"}]}]`, "[]x", "5x",
	`"s"x`, "{} garbage", `{"model":"m"}{"model":"n"}`, "truex", " \t\r\n{}", "{}\u00a0",
}

// ---- families ----

func nodeDataCases(g gen) []any {
	fields := []field{
		{"Name", "string"}, {"ID", "string"}, {"TunnelAddress", "string"}, {"ServiceID", "string"},
		{"LastSeen", "time"}, {"AvailableVRAM", "uint"}, {"Models", "strings"},
	}
	var docs [][]byte
	for _, d := range fixedDocs {
		docs = append(docs, []byte(d))
	}
	extra := []string{
		`{"AvailableVRAM":1.0}`, `{"AvailableVRAM":1e3}`, `{"AvailableVRAM":-0}`, `{"AvailableVRAM":0.0}`,
		`{"\u017ferviceID":"x"}`, `{"ſerviceID":"x"}`, `{"TunnelAddress":true,"TunnelAddress":null}`,
		`{"LastSeen":"２０２６-01-01T00:00:00Z"}`, "\xef\xbb\xbf{}", `{"Models":["x","\ud800"]}`,
		`{"Models":["a","b"],"Models":[null,"c"]}`, `{"Models":["a","b"],"Models":["x"],"Models":[null,null]}`,
		`{"Models":["a","b"],"Models":[],"Models":[null]}`, `{"Models":["a","b"],"Models":null,"Models":[null]}`,
		`{"Name":"a","name":"b"}`, `{"name":"b","Name":"a"}`, `{"NAME":"a","Name":null}`, `{"id":"x","ıd":"y"}`,
		`{"İD":"y"}`, `{"LastSeen":"2026-01-01T00:00:00\u005a"}`, `{"LastSeen":"2026-01-01T00:00:00Z","LastSeen":null}`,
		`{"LastSeen":5}`, `{"AvailableVRAM":"5"}`, `{"AvailableVRAM":18446744073709551616}`,
		`{"\u004eame":"esc"}`, `{"Name":"\ud800\udc00\udc00"}`, "{\"Name\":\"\xff\xfe\"}", "{\"N\xffame\":\"x\"}",
		`{"Models":[1]}`, `{"Models":"x"}`, `{"Models":{}}`, `{"Name":"x"} {"Name":"y"}`,
	}
	for _, d := range extra {
		docs = append(docs, []byte(d))
	}
	for i := 0; i < 1000; i++ {
		docs = append(docs, g.doc(fields))
	}
	var cases []any
	for _, doc := range docs {
		var n nodeData
		err := json.Unmarshal(doc, &n)
		c := map[string]any{"in": input(doc), "ok": err == nil}
		if err == nil {
			c["out"] = map[string]any{
				"Name": n.Name, "ID": n.ID, "TunnelAddress": n.TunnelAddress, "ServiceID": n.ServiceID,
				"LastSeen": timeJSON(n.LastSeen), "AvailableVRAM": fmt.Sprint(n.AvailableVRAM), "Models": n.Models,
			}
			// What a Go peer announces for this record, its time in UTC as peers write it.
			n.LastSeen = n.LastSeen.UTC()
			if encoded, err := json.Marshal(n); err == nil {
				c["encoded"] = string(encoded)
			}
		}
		cases = append(cases, c)
	}
	return cases
}

func eventCases(g gen) []any {
	obsFields := []field{{"model", "string"}, {"chain", "uints"}, {"node_id", "string"}, {"replica", "int"}}
	var docs [][]byte
	for _, d := range fixedDocs {
		docs = append(docs, []byte(d))
	}
	extra := []string{
		`{"node_id":"n1","node_id":null}`, `{"model":"m","chain":[-0],"node_id":"n1","replica":0}`,
		`{"chain":[1,2,3],"chain":[9],"chain":[null,null,null],"node_id":"n"}`, `{"chain":[null],"node_id":"n"}`,
		`{"chain":[1],"chain":[],"chain":[null],"node_id":"n"}`, `{"chain":"x","node_id":"n"}`,
		`{"replica":-0,"node_id":"n"}`, `{"NODE_ID":"a","node_id":"b"}`, `{"node_id":"b","NODE_ID":"a"}`,
		`{"nodeid":"n"}`, `{"node-id":"n"}`, `{"Node_Id":"n"}`, `{"model":"\ud800","node_id":"\udfff"}`,
		"{\"model\":\"\xff\",\"node_id\":\"n\"}",
	}
	for _, d := range extra {
		docs = append(docs, []byte(d))
	}
	for i := 0; i < 1000; i++ {
		docs = append(docs, g.doc(obsFields))
	}
	var cases []any
	for _, doc := range docs {
		var o observeEvent
		oerr := json.Unmarshal(doc, &o)
		var inv invalidateEvent
		ierr := json.Unmarshal(doc, &inv)
		c := map[string]any{"in": input(doc), "observe_ok": oerr == nil, "invalidate_ok": ierr == nil}
		if oerr == nil {
			chain := make([]string, len(o.Chain))
			for i, h := range o.Chain {
				chain[i] = fmt.Sprint(h)
			}
			c["observe"] = map[string]any{"model": o.Model, "chain": chain, "chain_nil": o.Chain == nil, "node_id": o.NodeID, "replica": fmt.Sprint(o.Replica)}
		}
		if ierr == nil {
			c["invalidate"] = map[string]any{"model": inv.Model, "node_id": inv.NodeID, "replica": fmt.Sprint(inv.Replica)}
		}
		cases = append(cases, c)
	}
	return cases
}

func (g gen) part() string {
	if g.r.IntN(8) == 0 {
		return g.pick(append([]string{"null", `"text"`, "5"}, stringLits[:3]...))
	}
	var members []string
	for n := g.r.IntN(3); n >= 0; n-- {
		switch g.r.IntN(6) {
		case 0, 1:
			members = append(members, g.member("type", g.pick([]string{`"text"`, `"TEXT"`, `"image_url"`, "null", "1", `"text"`})))
		case 2, 3, 4:
			v := g.pick(stringLits)
			if g.r.IntN(5) == 0 {
				v = g.pick(otherLits)
			}
			members = append(members, g.member("text", v))
		default:
			members = append(members, g.member(g.pick([]string{"image_url", "input_audio", "video_url"}), g.pick([]string{`"x"`, `{"url":"u"}`, "1", "null"})))
		}
	}
	return g.object(members)
}

func (g gen) content() string {
	switch g.r.IntN(6) {
	case 0, 1:
		return g.pick(stringLits)
	case 2, 3:
		n := g.r.IntN(4)
		parts := make([]string, n)
		for i := range parts {
			parts[i] = g.part()
		}
		return "[" + strings.Join(parts, ",") + "]"
	default:
		return g.anyValue(0)
	}
}

func (g gen) message() string {
	if g.r.IntN(15) == 0 {
		return g.pick([]string{"null", `"hi"`, "[]", "5"})
	}
	var members []string
	for n := g.r.IntN(3); n >= 0; n-- {
		switch g.r.IntN(8) {
		case 0, 1, 2:
			v := g.pick([]string{`"user"`, `"system"`, `"o"`, `"assistant"`, `"\ud800"`, "null", `""`})
			if g.r.IntN(10) == 0 {
				v = g.pick(otherLits)
			}
			members = append(members, g.member("role", v))
		case 3, 4, 5:
			members = append(members, g.member("content", g.content()))
		case 6:
			members = append(members, g.member(g.pick([]string{"name", "tool_call_id", "reasoning", "reasoning_content"}), g.pick([]string{`"x"`, "null", "1"})))
		default:
			members = append(members, g.member(g.pick([]string{"tool_calls", "function_call"}), g.pick([]string{"[]", "null", `[{"index":1}]`, `[{"index":1.5}]`, `[{"id":2}]`, `{"a":1e400}`, `"x"`})))
		}
	}
	return g.object(members)
}

func messageCases(g gen) []any {
	var docs [][]byte
	for _, d := range fixedDocs {
		docs = append(docs, []byte(d))
	}
	extra := []string{
		`{"messages":[{"Role":"o"}]}`, `{"messages":[{"role":"x","role":null}]}`, `{"messages":[{"content":"a\ud800b"}]}`,
		`{"messages":[{"content":[{"type":"text","text":"a","Text":"b"}]}]}`,
		`{"messages":[{"content":[{"type":"text","Text":"b","text":"a"}]}]}`,
		`{"messages":[{"content":[{"type":"text","text":"a","text":null}]}]}`,
		`{"messages":[{"content":[{"type":"text","Text":"b","text":null}]}]}`,
		`{"messages":[{"content":[{"image_url":"x","text":"a","type":"text"}]}]}`,
		`{"messages":[{"content":[{"type":"text","text":5},{"type":"text","text":"z"}]}]}`,
		`{"messages":[{"content":"a","content":null}]}`, `{"messages":[{"content":"a","content":5}]}`,
		`{"messages":[{"role":"a","content":"x"}],"messages":[{"content":"y"}]}`,
		`{"messages":[{"role":"a"},{"role":"b"}],"messages":[null]}`, `{"messages":[{"role":"a"}],"messages":[]}`,
		`{"messages":[{"role":5}]}`, `{"messages":["hi"]}`, `{"messages":{}}`, `{"messages":null}`, `{"Messages":[{"ROLE":"u"}]}`,
		`{"meſſages":[{"role":"u"}]}`, `{"messages":[{"content":[1e400]}]}`, `{"messages":[{"content":1e400}]}`,
		`{"messages":[{"role":"u"}],"model":5}`, `{"messages":[{"role":"u"}]} trailing`, `{"messages":[{"role":"u","content":"` + strings.Repeat("[", 3) + `"}]}`,
		`{"messages":[{"content":` + strings.Repeat("[", 3000) + strings.Repeat("]", 3000) + `}]}`,
		`{"messages":[{"role":"u","content":[{"type":"text","text":"` + strings.Repeat("[", 10) + `"}]}]}`,
		`{"messages":[{"content":[{"type":"text","text":"<&>"}]}]}`, `{"messages":[{"tool_calls":[{"index":-0}]}]}`,
		`{"messages":[{"content":[{"Type":"text","text":"a"},{"tyPe":"text","TEXT":"b"}]}]}`,
		`{"messages":[{"content":[{"type":"text","text":"a","TYPE":"image"}]}]}`,
		`{"messages":[{"content":[{"type":"text","text":"a","ſ":"x"}]}]}`,
		`{"messages":[{"content":[{"type":"text","text":"a"}],"content":[{"type":"text"}]}]}`,
		`{"messages":[{"role":"u","content":[{"type":"text","text":"\ud800"},{"text":"t","type":"text"}]}]}`,
		`{"messages":[{"content":[1e-400,{"type":"text","text":"q"}]}]}`,
	}
	for _, d := range extra {
		docs = append(docs, []byte(d))
	}
	for i := 0; i < 1500; i++ {
		n := g.r.IntN(4)
		msgs := make([]string, n)
		for j := range msgs {
			msgs[j] = g.message()
		}
		members := []string{g.member("messages", "["+strings.Join(msgs, ",")+"]")}
		if g.r.IntN(5) == 0 {
			members = append(members, g.member("messages", g.pick([]string{"null", "[]", "[null]", `[{"role":"r2"}]`})))
		}
		if g.r.IntN(4) == 0 {
			members = append(members, g.member("model", g.pick([]string{`"m"`, "5", "null"})))
		}
		if g.r.IntN(4) == 0 {
			members = append(members, `"other":`+g.anyValue(0))
		}
		docs = append(docs, g.frame(g.object(members)))
	}
	var cases []any
	for _, doc := range docs {
		src, ok := prefixSource(doc)
		c := map[string]any{"in": input(doc), "ok": ok}
		if ok {
			c["source"] = src
		}
		var named struct {
			Model string `json:"model"`
		}
		if err := json.Unmarshal(doc, &named); err == nil {
			c["model"] = named.Model
		}
		cases = append(cases, c)
	}
	return cases
}

func timeCases(g gen) []any {
	var lits []string
	for _, l := range timeLits {
		lits = append(lits, l[1:len(l)-1])
	}
	digits := "0123456789"
	for i := 0; i < 1000; i++ {
		year := fmt.Sprintf("%04d", g.r.IntN(10000))
		s := fmt.Sprintf("%s-%02d-%02dT%02d:%02d:%02d", year, g.r.IntN(14), g.r.IntN(33), g.r.IntN(26), g.r.IntN(62), g.r.IntN(62))
		if g.r.IntN(3) == 0 {
			sep := "."
			if g.r.IntN(6) == 0 {
				sep = ","
			}
			n := 1 + g.r.IntN(12)
			var b strings.Builder
			for j := 0; j < n; j++ {
				b.WriteByte(digits[g.r.IntN(10)])
			}
			s += sep + b.String()
		}
		switch g.r.IntN(4) {
		case 0:
			s += "Z"
		case 1:
			s += fmt.Sprintf("+%02d:%02d", g.r.IntN(26), g.r.IntN(62))
		case 2:
			s += fmt.Sprintf("-%02d:%02d", g.r.IntN(26), g.r.IntN(62))
		default:
			s += g.pick([]string{"z", "", "+0100", "+01", "Z ", "-00:00"})
		}
		if g.r.IntN(10) == 0 {
			b := []byte(s)
			b[g.r.IntN(len(b))] = "T:-.+Z0 x"[g.r.IntN(9)]
			s = string(b)
		}
		lits = append(lits, s)
	}
	var cases []any
	for _, s := range lits {
		c := map[string]any{"in": input([]byte(s))}
		t, err := time.Parse(time.RFC3339Nano, s)
		c["parse_ok"] = err == nil
		if err == nil {
			c["parse"] = timeJSON(t.UTC())
		}
		var u time.Time
		uerr := u.UnmarshalJSON([]byte(`"` + s + `"`))
		c["json_ok"] = uerr == nil
		if uerr == nil {
			c["json"] = timeJSON(u.UTC())
		}
		cases = append(cases, c)
	}
	return cases
}

// foldCases lists every non-ASCII rune whose fold class (the runes unicode.SimpleFold cycles
// through) has a smallest member other than itself, with that member: the canonical rune
// that case-insensitive key matching compares.
func foldCases() []any {
	var cases []any
	for r := rune(0x80); r <= unicode.MaxRune; r++ {
		if r >= 0xd800 && r <= 0xdfff {
			continue
		}
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < least {
				least = f
			}
		}
		if least != r {
			cases = append(cases, []int{int(r), int(least)})
		}
	}
	sort.Slice(cases, func(i, j int) bool { return cases[i].([]int)[0] < cases[j].([]int)[0] })
	return cases
}

// writeFoldModule writes the fold table as a Python module for the library: key matching
// must fold exactly as Go does, whatever Unicode version the Python runtime ships.
func writeFoldModule(path string, cases []any) {
	var b strings.Builder
	b.WriteString(`"""Go's folding of object keys for case-insensitive matching (generated: do not edit).

Written by ` + "`make vectors`" + ` (tools/govectors) from Go's unicode tables. ` + "``FOLD``" + ` maps every
non-ASCII code point whose simple case-folding class (the runes ` + "``unicode.SimpleFold``" + ` cycles
through) has a smaller member to that least member; ASCII letters fold to upper case and every
other code point to itself.
"""

from typing import Final

UNICODE_VERSION: Final = "` + unicode.Version + `"

FOLD: Final[dict[int, int]] = {
`)
	for i, c := range cases {
		pair := c.([]int)
		if i%5 == 0 {
			b.WriteString("   ")
		}
		fmt.Fprintf(&b, " 0x%x: 0x%x,", pair[0], pair[1])
		if i%5 == 4 || i == len(cases)-1 {
			b.WriteString("\n")
		}
	}
	b.WriteString("}\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		panic(err)
	}
}

func main() {
	out := flag.String("out", "tests/vectors", "directory to write the vector files into")
	foldPy := flag.String("fold-module", "", "also write the fold table as this Python module")
	seed := flag.Uint64("seed", 13, "seed of the generated cases")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		panic(err)
	}
	g := gen{rand.New(rand.NewPCG(*seed, 0x9e3779b97f4a7c15))}
	write(*out, "go_nodedata.json", "json.Unmarshal into the NodeData gossip record; encoded: json.Marshal of the result (LastSeen in UTC)", nodeDataCases(g))
	write(*out, "go_events.json", "json.Unmarshal into the observe and invalidate sync events", eventCases(g))
	write(*out, "go_messages.json", "chat request body -> prefix source (json.Decoder.Decode of model and messages); model: json.Unmarshal into a struct with a model string, absent when it fails", messageCases(g))
	write(*out, "go_rfc3339.json", "time.Parse(time.RFC3339Nano, s) and time.Time.UnmarshalJSON of the quoted bytes", timeCases(g))
	folds := foldCases()
	write(*out, "go_fold.json", "[rune, least rune of its unicode.SimpleFold class] for every non-ASCII rune that folds", folds)
	if *foldPy != "" {
		writeFoldModule(*foldPy, folds)
	}
}
