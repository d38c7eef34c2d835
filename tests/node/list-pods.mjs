// Lists pods and deployments through a kubeconfig with @kubernetes/client-node, as a
// Node.js program would: `node list-pods.mjs KUBECONFIG NAMESPACE` prints JSON.
import * as k8s from "@kubernetes/client-node";

const [kubeconfig, namespace] = process.argv.slice(2);
const kc = new k8s.KubeConfig();
kc.loadFromFile(kubeconfig);
const core = kc.makeApiClient(k8s.CoreV1Api);
const apps = kc.makeApiClient(k8s.AppsV1Api);
const pods = await core.listNamespacedPod({ namespace });
const deployments = await apps.listNamespacedDeployment({ namespace });
console.log(
  JSON.stringify({
    pods: pods.items.map((p) => ({ name: p.metadata.name, phase: p.status?.phase ?? null })),
    deployments: deployments.items.map((d) => ({
      name: d.metadata.name,
      replicas: d.spec.replicas,
    })),
  }),
);
