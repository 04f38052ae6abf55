import { useQuery } from "@tanstack/react-query";
import { data, sdk } from "../api";

export type BaseModel = {
  id: string; family: string; parameters: number; task: string; max_length: number;
  recommended_instance_types: string[]; offline?: boolean; description?: string;
};
export type InstanceType = {
  name: string; accelerator: string; training_price_per_hour: number | null;
  inference_price_per_hour: number | null; available: boolean;
};

export function useBaseModels() {
  return useQuery({
    queryKey: ["base-models"], staleTime: Infinity,
    queryFn: async () => (await data(sdk.baseModelsApiBaseModelsGet())).data as BaseModel[],
  });
}

export function useInstanceTypes() {
  return useQuery({
    queryKey: ["instance-types"], staleTime: Infinity,
    queryFn: async () => {
      const r = await data(sdk.instanceTypesApiInstanceTypesGet());
      return { types: r.data as InstanceType[], backend: r.backend as string };
    },
  });
}
