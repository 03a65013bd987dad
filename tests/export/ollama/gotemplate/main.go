// Renders an Ollama TEMPLATE with Go's text/template the way Ollama's chat does
// (template/template.go: collate, then Execute with System, Messages and Response).
// Input on stdin: {"template": "...", "messages": [{"role": ..., "content": ...}]}.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct{ Role, Content string }

func main() {
	var in struct {
		Template string
		Messages []Message
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	// Like Ollama: every system message joined is .System; consecutive messages of one
	// role are merged into one.
	var system []string
	var messages []*Message
	for i := range in.Messages {
		m := in.Messages[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(messages); n > 0 && messages[n-1].Role == m.Role {
			messages[n-1].Content += "\n\n" + m.Content
		} else {
			messages = append(messages, &m)
		}
	}
	t := template.Must(template.New("").Option("missingkey=zero").Parse(in.Template))
	values := map[string]any{
		"System": strings.Join(system, "\n\n"), "Messages": messages, "Response": "",
	}
	if err := t.Execute(os.Stdout, values); err != nil {
		panic(err)
	}
}
