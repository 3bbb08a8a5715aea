{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "df-middleware.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "df-middleware.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "df-middleware.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "df-middleware.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "df-middleware.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "df-middleware.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "df-middleware.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The name kopf peering uses; dfm_operator.main.PEERING_NAME. */}}
{{- define "df-middleware.peeringName" -}}
df-middleware
{{- end }}

{{/* The version the operator's pods and receivers are labelled with: the image tag, else appVersion. */}}
{{- define "df-middleware.version" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* Labels -----------------------------------------------------------------------------
Every object carries the recommended labels. Call with (dict "ctx" $ "component" "operator"). */}}

{{- define "df-middleware.selectorLabels" -}}
app.kubernetes.io/name: {{ include "df-middleware.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "df-middleware.labels" -}}
{{ include "df-middleware.selectorLabels" . }}
app.kubernetes.io/version: {{ include "df-middleware.version" .ctx | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: df-middleware
helm.sh/chart: {{ include "df-middleware.chart" .ctx }}
{{- end }}

{{/* Images ----------------------------------------------------------------------------- */}}

{{- define "df-middleware.imageRef" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}
{{- end }}

{{- define "df-middleware.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- include "df-middleware.imageRef" (dict "repository" .Values.image.repository "tag" $tag "digest" .Values.image.digest) }}
{{- end }}

{{- define "df-middleware.postgresql.image" -}}
{{- include "df-middleware.imageRef" .Values.postgresql.image }}
{{- end }}

{{/* Security ---------------------------------------------------------------------------
Pod Security Standards "restricted", for every pod and container of the chart. */}}

{{- define "df-middleware.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Scope ------------------------------------------------------------------------------ */}}

{{/* The namespaces that get the evaluation database's Secret. */}}
{{- define "df-middleware.databaseSecretNamespaces" -}}
{{- $namespaces := concat (list .Release.Namespace) .Values.watchNamespaces .Values.postgresql.secretNamespaces | uniq }}
{{- toJson $namespaces }}
{{- end }}

{{/* RBAC -------------------------------------------------------------------------------
Exactly what the operator calls (dfm_operator.kube.KINDS) plus what kopf needs
(dfm_operator.rbac.KOPF_RULES). tests/unit/test_chart.py fails when these grant more or less
than dfm_operator.rbac.required_rules(). */}}

{{/* Rules on namespaced resources: a ClusterRole cluster-wide, a Role per watched namespace. */}}
{{- define "df-middleware.rbac.namespacedRules" -}}
# The receivers' and scheduled jobs' children: server-side applied (create, patch), watched where
# the operator reacts to them, read and deleted only where it prunes them (an Ingress or PDB the
# spec dropped).
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [create, list, patch, watch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [create, get, list, patch, watch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [create, get, list, patch, watch]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [create, get]
# CronJobs: applied, and watched for a hand deletion (a SyncSchedule's is re-created at once).
- apiGroups: [batch]
  resources: [cronjobs]
  verbs: [create, list, patch, watch]
# The Jobs those CronJobs run are watched for their outcome, and their Pods listed for the
# summary a job leaves in its termination message.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [create, delete, get, list, patch, watch]
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [create, delete, get, list, patch, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, list, patch, watch]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [create, delete, get, patch]
# The custom resources: watched, annotated by kopf, and their status written; read by the
# operator's own code only where it reconciles them.
- apiGroups: [dfm.dev]
  resources: [backupschedules, managedsecrets, syncschedules, webhooksources]
  verbs: [get, list, patch, watch]
- apiGroups: [dfm.dev]
  resources: [backupschedules/status, managedsecrets/status, syncschedules/status, webhooksources/status]
  verbs: [patch]
# Children's ownerReferences set blockOwnerDeletion: the OwnerReferencesPermissionEnforcement
# admission plugin (OpenShift) then asks for update on the owner's finalizers.
- apiGroups: [dfm.dev]
  resources: [backupschedules/finalizers, managedsecrets/finalizers, syncschedules/finalizers, webhooksources/finalizers]
  verbs: [update]
# kopf: Events on the custom resources.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* Rules only the namespaced mode needs: in each watched namespace's Role. */}}
{{- define "df-middleware.rbac.namespacedModeRules" -}}
# kopf: peering between replicas in namespaced mode.
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, patch, watch]
{{- end }}

{{/* Rules on cluster-scoped resources: always a ClusterRole. */}}
{{- define "df-middleware.rbac.clusterRules" -}}
# kopf: discovering the CRDs it serves (and whether ServiceMonitors exist), and namespaces.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- if not .Values.watchNamespaces }}
# kopf: peering between replicas when watching the whole cluster.
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, patch, watch]
{{- end }}
{{- end }}
