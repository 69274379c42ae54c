{{/* Labels every object carries; the first two are deploy/base's. */}}
{{- define "itg.labels" -}}
app.kubernetes.io/name: internal-task-gateway
app.kubernetes.io/component: worker
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The labels that select the workers' pods: stable across upgrades. */}}
{{- define "itg.selector" -}}
app.kubernetes.io/name: internal-task-gateway
app.kubernetes.io/component: worker
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The worker's config file, built from values. */}}
{{- define "itg.config" -}}
{{- $nats := dict "url" .Values.nats.url -}}
{{- with .Values.nats.connectionName }}{{ $_ := set $nats "connection_name" . }}{{ end -}}
{{- $s := .Values.nats.secret -}}
{{- if $s.name -}}
{{- if and $s.credsKey $s.nkeySeedKey -}}
{{- fail "nats.secret: set credsKey or nkeySeedKey, not both: the worker takes one way to authenticate" -}}
{{- end -}}
{{- with $s.credsKey }}{{ $_ := set $nats "creds_file" (printf "/etc/itg/nats/%s" .) }}{{ end -}}
{{- with $s.nkeySeedKey }}{{ $_ := set $nats "nkey_seed_file" (printf "/etc/itg/nats/%s" .) }}{{ end -}}
{{- $tls := dict -}}
{{- with $s.caKey }}{{ $_ := set $tls "ca_file" (printf "/etc/itg/nats/%s" .) }}{{ end -}}
{{- with $s.certKey }}{{ $_ := set $tls "cert_file" (printf "/etc/itg/nats/%s" .) }}{{ end -}}
{{- with $s.keyKey }}{{ $_ := set $tls "key_file" (printf "/etc/itg/nats/%s" .) }}{{ end -}}
{{- if $tls }}{{ $_ := set $nats "tls" $tls }}{{ end -}}
{{- end -}}
{{- $rms := list -}}
{{- range .Values.resourceManagers -}}
{{- $rm := deepCopy . -}}
{{- if not (hasKey $rm "allowed_namespaces") }}{{ $_ := set $rm "allowed_namespaces" $.Values.taskNamespaces }}{{ end -}}
{{- $rms = append $rms $rm -}}
{{- end -}}
{{- $host := .Values.adminHost -}}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end -}}
{{- $cfg := dict "nats" $nats "admin" (dict "address" (printf "%s:%d" $host (int .Values.adminPort))) "log_format" .Values.logFormat "resource_managers" $rms -}}
{{- with .Values.jetstream }}{{ $_ := set $cfg "jetstream" . }}{{ end -}}
{{- with .Values.worker }}{{ $_ := set $cfg "worker" . }}{{ end -}}
{{- toYaml $cfg }}
{{- end }}
