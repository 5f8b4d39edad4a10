{{- define "pylon.labels" -}}
app.kubernetes.io/name: pylon
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "pylon.selector" -}}
app.kubernetes.io/name: pylon
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
