import { Request, Response } from "express";
import { Pool } from "pg";

export async function listOrders(db: Pool, req: Request, res: Response): Promise<void> {
  const customer = String(req.query.customer);
  const result = await db.query(`SELECT * FROM orders WHERE customer = '${customer}'`);
  res.json(result.rows);
}
